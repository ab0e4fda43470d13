//! Finding a runtime's per-pod processes in /proc, so their memory can be measured.

/// Which processes belong to one runtime instance.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// `comm` of its shims (as the kernel truncates it: at most 15 bytes).
    pub shim_comm: String,
    /// A string every one of this instance's shims has in its command line (its state dir or
    /// the daemon's socket), so shims of other instances are not counted.
    pub marker: String,
    /// `comm` of per-pod helper processes the runtime starts under a shim (containerd: the
    /// sandbox's pause process).
    pub helper_comm: Option<String>,
}

#[derive(Debug, Default)]
pub struct Found {
    pub shims: Vec<u32>,
    pub others: Vec<u32>,
}

fn read(pid: u32, what: &str) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/{what}"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = read(pid, "stat")?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Matcher {
    pub fn find(&self) -> Found {
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let mut found = Found::default();
        for &pid in &pids {
            let comm = read(pid, "comm").unwrap_or_default();
            if comm.trim_end() != self.shim_comm {
                continue;
            }
            let cmdline = read(pid, "cmdline").unwrap_or_default().replace('\0', " ");
            if cmdline.contains(&self.marker) {
                found.shims.push(pid);
            }
        }
        if let Some(helper) = &self.helper_comm {
            for &pid in &pids {
                let comm = read(pid, "comm").unwrap_or_default();
                if comm.trim_end() == helper && ppid(pid).is_some_and(|p| found.shims.contains(&p))
                {
                    found.others.push(pid);
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_by_comm_and_marker() {
        let me = std::process::id();
        let comm = read(me, "comm").unwrap().trim_end().to_owned();
        let arg0 = std::env::args().next().unwrap();
        let m = Matcher {
            shim_comm: comm.clone(),
            marker: arg0,
            helper_comm: None,
        };
        assert!(m.find().shims.contains(&me));
        let other = Matcher {
            shim_comm: comm,
            marker: "no such marker in any command line \u{1}".into(),
            helper_comm: None,
        };
        assert!(!other.find().shims.contains(&me));
        assert_eq!(ppid(me), Some(std::os::unix::process::parent_id()));
    }
}
