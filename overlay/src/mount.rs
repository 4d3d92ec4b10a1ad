//! Mounting layer chains with the kernel's overlayfs.

use std::path::Path;

use crate::{Driver, Result};

impl Driver {
    /// Mount the chain `layers` (top first) read-only at `target` (created if
    /// missing). Lower dirs are given by their `l/<short>` links; a one-layer
    /// chain gets an extra empty lower (overlayfs needs two without an upper).
    pub fn mount_read_only(&self, layers: &[&str], target: &Path) -> Result<()> {
        let _ = (layers, target);
        todo!()
    }
}

/// Unmount `target` (lazy detach is not used: a busy mount is an error).
pub fn unmount(target: &Path) -> Result<()> {
    let _ = target;
    todo!()
}

/// Is `target` currently a mount point (per `/proc/self/mountinfo`)?
pub fn is_mounted(target: &Path) -> Result<bool> {
    let _ = target;
    todo!()
}
