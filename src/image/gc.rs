//! The image garbage-collection policy (`[image.gc]`, off by default): which images to remove
//! when the image filesystem crosses its high watermark, or when images sit unused too long.
//!
//! Like kubelet's image GC: only images no container uses and that are not pinned, none newer
//! than `min_age`, least recently used first, until use is back under the low watermark. Unlike
//! kubelet's estimate by image size, a removal counts only the layers no remaining image shares
//! (removing an image whose layers another image holds frees nothing). Planning is pure; the
//! removal itself goes through `ImageService::remove`, like a RemoveImage call.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::config::ImageGcConfig;

/// What the planner knows of one image.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    /// Unix seconds of the last pull or container creation, whichever is later.
    pub last_used: i64,
    /// (diff id, bytes) of every layer.
    pub layers: Vec<(String, u64)>,
    pub pinned: bool,
    pub in_use: bool,
}

/// Filesystem figures in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Disk {
    pub used: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Unused for longer than `max_unused_age`.
    Unused,
    /// To bring disk use under the low watermark.
    DiskPressure,
}

/// Images to remove, oldest use first, with why.
pub fn plan(
    images: &[Candidate],
    now: i64,
    policy: &ImageGcConfig,
    disk: Option<Disk>,
) -> Vec<(String, Reason)> {
    let age = |c: &Candidate| Duration::from_secs((now - c.last_used).max(0) as u64);
    let mut eligible: Vec<&Candidate> = images
        .iter()
        .filter(|c| !c.pinned && !c.in_use && age(c) >= policy.min_age)
        .collect();
    eligible.sort_by_key(|c| (c.last_used, c.id.clone()));
    // How many images hold each layer: only a layer's last holder frees its bytes.
    let mut holders: HashMap<&str, usize> = HashMap::new();
    for c in images {
        let unique: HashSet<&str> = c.layers.iter().map(|(d, _)| d.as_str()).collect();
        for d in unique {
            *holders.entry(d).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    let mut freed = 0u64;
    let release = |c: &Candidate, holders: &mut HashMap<&str, usize>| {
        let mut bytes = 0;
        let unique: HashMap<&str, u64> = c.layers.iter().map(|(d, b)| (d.as_str(), *b)).collect();
        for (d, b) in unique {
            if let Some(n) = holders.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    bytes += b;
                }
            }
        }
        bytes
    };
    let mut taken = HashSet::new();
    if !policy.max_unused_age.is_zero() {
        for c in &eligible {
            if age(c) > policy.max_unused_age {
                freed += release(c, &mut holders);
                taken.insert(c.id.clone());
                out.push((c.id.clone(), Reason::Unused));
            }
        }
    }
    if let Some(d) = disk.filter(|d| d.capacity > 0) {
        let pct = |used: u64| used as u128 * 100 / d.capacity as u128;
        if pct(d.used.saturating_sub(freed)) >= policy.high_threshold_percent as u128 {
            let target = d.capacity as u128 * policy.low_threshold_percent as u128 / 100;
            for c in &eligible {
                if (d.used.saturating_sub(freed)) as u128 <= target {
                    break;
                }
                if taken.contains(&c.id) {
                    continue;
                }
                freed += release(c, &mut holders);
                out.push((c.id.clone(), Reason::DiskPressure));
            }
        }
    }
    out
}

/// Used and total bytes of the filesystem holding `path`.
pub fn disk_of(path: &std::path::Path) -> Option<Disk> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size() as u64;
    let capacity = s.blocks() as u64 * frag;
    let free = s.blocks_free() as u64 * frag;
    Some(Disk {
        used: capacity.saturating_sub(free),
        capacity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn img(id: &str, last_used: i64, layers: &[(&str, u64)]) -> Candidate {
        Candidate {
            id: id.into(),
            last_used,
            layers: layers.iter().map(|(d, b)| (d.to_string(), *b)).collect(),
            pinned: false,
            in_use: false,
        }
    }

    fn policy() -> ImageGcConfig {
        ImageGcConfig {
            enabled: true,
            high_threshold_percent: 80,
            low_threshold_percent: 50,
            max_unused_age: Duration::ZERO,
            min_age: Duration::from_secs(60),
            interval: Duration::from_secs(60),
        }
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn below_the_high_watermark_nothing_goes() {
        let imgs = [img("a", 0, &[("l1", 10 * MB)])];
        let d = Disk {
            used: 79 * MB,
            capacity: 100 * MB,
        };
        assert!(plan(&imgs, NOW, &policy(), Some(d)).is_empty());
    }

    #[test]
    fn least_recently_used_first_until_under_the_low_watermark() {
        let imgs = [
            img("new", NOW - 100, &[("l3", 20 * MB)]),
            img("old", NOW - 10_000, &[("l1", 20 * MB)]),
            img("mid", NOW - 5_000, &[("l2", 20 * MB)]),
        ];
        let d = Disk {
            used: 90 * MB,
            capacity: 100 * MB,
        };
        // 90 → 70 (old) → 50 (mid): at the low watermark, stop.
        let got = plan(&imgs, NOW, &policy(), Some(d));
        assert_eq!(
            got,
            vec![
                ("old".into(), Reason::DiskPressure),
                ("mid".into(), Reason::DiskPressure)
            ]
        );
    }

    #[test]
    fn in_use_pinned_and_young_images_stay() {
        let mut used = img("used", 0, &[("l1", 50 * MB)]);
        used.in_use = true;
        let mut pinned = img("pinned", 0, &[("l2", 50 * MB)]);
        pinned.pinned = true;
        let young = img("young", NOW - 10, &[("l3", 50 * MB)]);
        let d = Disk {
            used: 99 * MB,
            capacity: 100 * MB,
        };
        assert!(plan(&[used, pinned, young], NOW, &policy(), Some(d)).is_empty());
    }

    #[test]
    fn shared_layers_free_nothing_until_their_last_holder_goes() {
        // a and b share a 40 MB base; removing a alone frees 1 MB.
        let imgs = [
            img("a", NOW - 9_000, &[("base", 40 * MB), ("a1", MB)]),
            img("b", NOW - 8_000, &[("base", 40 * MB), ("b1", MB)]),
            img("c", NOW - 7_000, &[("c1", 30 * MB)]),
        ];
        let d = Disk {
            used: 85 * MB,
            capacity: 100 * MB,
        };
        // 85 → 84 (a) → 43 (b frees base + b1): under 50, c stays.
        let got: Vec<String> = plan(&imgs, NOW, &policy(), Some(d))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(got, vec!["a", "b"]);
    }

    #[test]
    fn unused_too_long_goes_whatever_the_disk() {
        let mut p = policy();
        p.max_unused_age = Duration::from_secs(3600);
        let imgs = [
            img("stale", NOW - 7200, &[("l1", MB)]),
            img("fresh", NOW - 600, &[("l2", MB)]),
        ];
        assert_eq!(
            plan(
                &imgs,
                NOW,
                &p,
                Some(Disk {
                    used: MB,
                    capacity: 100 * MB
                })
            ),
            vec![("stale".into(), Reason::Unused)]
        );
        assert_eq!(
            plan(&imgs, NOW, &p, None).len(),
            1,
            "no disk figures needed"
        );
    }

    #[test]
    fn real_filesystem_figures() {
        let d = disk_of(std::path::Path::new("/")).unwrap();
        assert!(d.capacity > 0 && d.used <= d.capacity);
    }
}
