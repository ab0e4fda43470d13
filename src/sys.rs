//! The only `unsafe` in kelson: allocator settings that neither std nor nix exposes. Every
//! other system call goes through nix.
#![allow(unsafe_code)]

/// Cap glibc malloc at `n` arenas. By default glibc gives every thread that allocates an arena of
/// its own (up to 8 per core) and keeps their free pages: after a burst of pod starts on the
/// blocking pool, that is megabytes of daemon RSS for no gain in an I/O-bound process.
/// Call before other threads start. Returns false where unsupported (non-glibc).
pub fn limit_malloc_arenas(n: i32) -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets an allocator parameter; it takes plain integers, touches no
        // memory of ours, and is called before any other thread exists.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = n;
        false
    }
}

/// Give free heap pages back to the kernel (after a pull's large buffers are dropped).
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only releases free memory held by the allocator; it takes a plain
        // integer and is thread-safe (it locks each arena).
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn allocator_calls_are_accepted() {
        #[cfg(target_env = "gnu")]
        assert!(super::limit_malloc_arenas(2));
        super::trim_heap();
    }
}
