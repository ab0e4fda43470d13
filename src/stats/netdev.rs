//! Interface counters of a pod's network namespace: `/proc/net/dev` as seen from inside it.
//!
//! A short-lived thread enters the namespace (`setns` changes only the calling thread) and
//! reads `/proc/thread-self/net/dev`, which shows that thread's namespace; the thread ends
//! right after, so no pooled thread is ever left in a pod's namespace. No process has to run in
//! the pod for this to work. (No crate reads counters of another namespace; rtnetlink would
//! need the same setns dance plus a netlink socket.)

use std::path::Path;

/// Counters of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Parse `/proc/net/dev`: two header lines, then `name: 8 receive fields 8 transmit fields`.
/// Malformed lines are skipped.
pub fn parse(text: &str) -> Vec<IfStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            if v.len() < 16 {
                return None;
            }
            Some(IfStats {
                name: name.trim().to_owned(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

/// Counters of every interface but loopback in the namespace pinned at `netns`.
pub fn read_in(netns: &Path) -> std::io::Result<Vec<IfStats>> {
    let ns = std::fs::File::open(netns)?;
    let text = std::thread::Builder::new()
        .name("netns-stats".into())
        .spawn(move || -> std::io::Result<String> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            std::fs::read_to_string("/proc/thread-self/net/dev")
        })?
        .join()
        .map_err(|_| std::io::Error::other("netns stats thread panicked"))??;
    Ok(parse(&text)
        .into_iter()
        .filter(|i| i.name != "lo")
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:  123456     100    1    2    0     0          0         0    65432      90    3    4    0     0       0          0
garbage line
  bad0: 1 2 3
";

    #[test]
    fn parses_proc_net_dev() {
        let all = parse(SAMPLE);
        assert_eq!(all.len(), 2, "{all:?}");
        let eth = &all[1];
        assert_eq!(eth.name, "eth0");
        assert_eq!(
            (eth.rx_bytes, eth.rx_packets, eth.rx_errors, eth.rx_dropped),
            (123456, 100, 1, 2)
        );
        assert_eq!(
            (eth.tx_bytes, eth.tx_packets, eth.tx_errors, eth.tx_dropped),
            (65432, 90, 3, 4)
        );
    }

    #[test]
    fn missing_namespace_is_an_error() {
        assert!(read_in(Path::new("/nonexistent/netns")).is_err());
    }
}
