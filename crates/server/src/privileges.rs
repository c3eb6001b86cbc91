//! Giving up root: a server started as root (to listen on ports below 1024) switches to an
//! ordinary user and group once its sockets are open, before it reads a byte from any client.
//! glibc applies the change to every thread of the process.

use nix::unistd::{Gid, Group, Uid, User, geteuid, setgid, setgroups, setuid};

/// What happened, for the startup message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Now running as this user and group.
    Switched { user: String, uid: u32, gid: u32 },
    /// Not root and no user configured: nothing to do.
    Unprivileged,
    /// Root, and no user configured.
    StillRoot,
}

/// Switch to `user` (and `group`, or the user's own group) if running as root.
pub fn drop_to(run_as: Option<&(String, Option<String>)>) -> Result<Outcome, String> {
    let root = geteuid().is_root();
    let Some((user, group)) = run_as else {
        return Ok(if root { Outcome::StillRoot } else { Outcome::Unprivileged });
    };
    let entry = User::from_name(user)
        .map_err(|e| format!("[process] user: looking up {user}: {e}"))?
        .ok_or_else(|| format!("[process] user: there is no user {user} on this system"))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("[process] group: looking up {g}: {e}"))?
                .ok_or_else(|| format!("[process] group: there is no group {g} on this system"))?
                .gid
        }
        None => entry.gid,
    };
    if !root {
        if geteuid() == entry.uid {
            return Ok(Outcome::Switched { user: user.clone(), uid: entry.uid.as_raw(), gid: gid.as_raw() });
        }
        return Err(format!("[process] user = {user:?}: switching users needs the server to be started as root"));
    }
    setgroups(&[gid]).map_err(|e| format!("dropping supplementary groups: {e}"))?;
    setgid(gid).map_err(|e| format!("switching to group {gid}: {e}"))?;
    setuid(entry.uid).map_err(|e| format!("switching to user {user}: {e}"))?;
    // Make sure there is no way back.
    if setuid(Uid::from_raw(0)).is_ok() || setgid(Gid::from_raw(0)).is_ok() {
        return Err("root privileges could be regained after switching users; refusing to run".into());
    }
    Ok(Outcome::Switched { user: user.clone(), uid: entry.uid.as_raw(), gid: gid.as_raw() })
}
