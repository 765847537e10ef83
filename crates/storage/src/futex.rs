//! Wait on / wake threads waiting on an `AtomicU32` (a futex on Linux).
//!
//! `wait(a, v)` sleeps only if `a` still holds `v`, and may return
//! spuriously; `wake(a, n)` wakes up to `n` threads waiting on `a`. A waker
//! changes `a` before calling `wake`, so a wake-up is never lost.

use std::sync::atomic::AtomicU32;

#[cfg(target_os = "linux")]
mod imp {
    use std::sync::atomic::AtomicU32;

    use rustix::thread::futex;

    pub fn wait(a: &AtomicU32, expected: u32) {
        // EAGAIN (value already changed) and EINTR are spurious returns.
        let _ = futex::wait(a, futex::Flags::PRIVATE, expected, None);
    }

    pub fn wake(a: &AtomicU32, n: u32) {
        let _ = futex::wake(a, futex::Flags::PRIVATE, n);
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    //! Portable fallback: one process-wide condition variable (every wake
    //! wakes every waiter, which then re-checks its own condition).
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use parking_lot::{Condvar, Mutex};

    static LOCK: Mutex<()> = Mutex::new(());
    static CV: Condvar = Condvar::new();

    pub fn wait(a: &AtomicU32, expected: u32) {
        let mut g = LOCK.lock();
        if a.load(Ordering::Acquire) == expected {
            CV.wait_for(&mut g, Duration::from_millis(10));
        }
    }

    pub fn wake(_a: &AtomicU32, _n: u32) {
        let _g = LOCK.lock();
        CV.notify_all();
    }
}

/// Sleep while `a == expected` (may return spuriously).
#[inline]
pub(crate) fn wait(a: &AtomicU32, expected: u32) {
    imp::wait(a, expected)
}

/// Wake up to `n` threads sleeping in [`wait`] on `a`.
#[inline]
pub(crate) fn wake(a: &AtomicU32, n: u32) {
    imp::wake(a, n)
}

/// Wake every thread sleeping in [`wait`] on `a`.
#[inline]
pub(crate) fn wake_all(a: &AtomicU32) {
    imp::wake(a, i32::MAX as u32)
}
