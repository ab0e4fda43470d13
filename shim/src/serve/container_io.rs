//! The container's stdio while it runs: its output pumped into the CRI log and fanned out to
//! attachers, attachers' stdin buffered into the container's stdin, resizes to its terminal.
//! Every step is non-blocking and bounded per turn: it never lets a container or an attacher
//! stall the loop, and never buffers past `STDIN_BUFFER` (or the attachers' own bound).

use std::time::{Duration, SystemTime};

use bytes::Buf;

use super::Shim;
use super::pipes::{PUMP_READS, read_some};
use crate::attachers::Event;
use crate::cri_log::record;

/// Attachers' stdin buffered for the container; past it, attachers with stdin are not read
/// until the container takes some (backpressure instead of memory).
pub const STDIN_BUFFER: usize = 1 << 20;
/// How long attachers get to take their last output when the container has exited.
const ATTACH_DRAIN: Duration = Duration::from_secs(2);

impl Shim {
    /// Read output `i` into the log and the attachers; it is removed at its end.
    pub(super) fn pump(&mut self, i: usize, buf: &mut [u8]) {
        let log = &mut self.log;
        let attachers = &mut self.attachers;
        let (stream, fd, splitter) = &mut self.outputs[i];
        let stream = *stream;
        let mut emit = |content: &[u8], full: bool| {
            log.write(&record(SystemTime::now(), stream, full, content))
        };
        // A bounded helping per wake-up: a container that writes as fast as the shim reads
        // (or whose records are being dropped on a full disk) must not keep the loop from
        // answering kelsond. poll is level-triggered, so the rest is read on the next turn.
        for _ in 0..PUMP_READS {
            match read_some(fd, buf) {
                Ok(Some(0)) => return,
                Ok(Some(n)) => {
                    splitter.push(&buf[..n], &mut emit);
                    for a in attachers.iter_mut() {
                        a.offer(stream, &buf[..n]);
                    }
                }
                // EOF; on a terminal, EIO once the container's side is closed.
                Ok(None) | Err(_) => {
                    splitter.finish(&mut emit);
                    self.outputs.remove(i);
                    return;
                }
            }
        }
    }

    /// What an attacher sent, and its output queue.
    pub(super) fn serve_attacher(&mut self, i: usize, buf: &mut [u8]) {
        let Some(a) = self.attachers.get_mut(i) else {
            return;
        };
        let mut gone = a.flush().is_err();
        let events = if gone || a.closing {
            vec![]
        } else {
            a.read(buf)
        };
        let detach_means_eof = self.cfg.stdin_once && !self.cfg.tty;
        for ev in events {
            match ev {
                Event::Stdin(data) => {
                    if self.attachers[i].stdin && self.stdin.is_some() && !self.stdin_eof {
                        self.stdin_buf.extend_from_slice(&data);
                    }
                }
                // stdin_once: the container's stdin ends with the first attacher's; the
                // attacher stays for the output. Otherwise the attacher detaches, and the
                // container's stdin stays open for the next one.
                Event::StdinClose if detach_means_eof => self.stdin_eof = true,
                Event::StdinClose => self.attachers[i].closing = true,
                Event::Resize(w, h) => {
                    if let Some(t) = &self.term
                        && let Err(e) = crate::console::set_size(t, w, h)
                    {
                        eprintln!("kelson-shim: resizing the terminal: {e}");
                    }
                }
                Event::Gone => gone = true,
            }
        }
        if !self.stdin_buf.is_empty() {
            self.write_stdin();
        }
        let a = &self.attachers[i];
        if gone || (a.closing && !a.wants_write()) {
            let a = self.attachers.remove(i);
            if a.stdin && detach_means_eof {
                self.stdin_eof = true;
            }
            if a.dropped > 0 {
                eprintln!(
                    "kelson-shim: an attacher missed {} bytes of output (it did not keep up)",
                    a.dropped
                );
            }
        }
        self.close_stdin_if_done();
    }

    /// Hand buffered stdin to the container without blocking.
    pub(super) fn write_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_buf.clear();
            return;
        };
        while !self.stdin_buf.is_empty() {
            match nix::unistd::write(fd, &self.stdin_buf) {
                Ok(n) => self.stdin_buf.advance(n),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                // The container closed its stdin (or exited): nothing more goes in.
                Err(_) => {
                    self.stdin = None;
                    self.stdin_buf.clear();
                    break;
                }
            }
        }
        self.close_stdin_if_done();
    }

    fn close_stdin_if_done(&mut self) {
        if self.stdin_eof && self.stdin_buf.is_empty() && self.stdin.is_some() {
            self.stdin = None;
        }
    }

    /// Attachers get the container's last output, then their connection closes.
    pub(super) fn finish_attachers(&mut self) {
        for a in std::mem::take(&mut self.attachers) {
            a.finish(ATTACH_DRAIN);
        }
    }
}
