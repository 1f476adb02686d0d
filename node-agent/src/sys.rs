//! The few system calls the agent makes directly, behind safe wrappers.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Sends signal number `signal` to process `pid` (kill(2)). Signal 0 only checks that the
/// process exists. Errors: `ESRCH` (no such process), `EPERM`, `EINVAL` (bad signal number).
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    if pid <= 0 {
        // kill(2) with 0 or a negative pid signals process groups: never what a pid file means.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pid {pid} is not a process"),
        ));
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates a FIFO at `path` with permission bits `mode` (mkfifo(3)).
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), mode as libc::mode_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
