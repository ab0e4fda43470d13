//! Cleaning up after tests and benchmarks: the cgroup parents their pods asked for.

/// Remove the cgroup tree `top` (leaves first) from every v1 hierarchy and the unified one.
pub fn remove_tree(top: &str) {
    let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hs.flatten() {
        let mut dirs = vec![];
        let mut stack = vec![h.path().join(top)];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
                dirs.push(d);
            }
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}
