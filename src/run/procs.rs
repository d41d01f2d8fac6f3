//! Process bookkeeping on Linux through `/proc`: the watched command's process tree (for
//! GPU sampling) and the orphans handed to us as child subreaper (so none is left behind).
use std::collections::{HashMap, HashSet};

/// (ppid, pgrp) of every visible live process (zombies, already dead, are left out).
fn table() -> HashMap<u32, (u32, u32)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(pp) = read_stat(pid) {
            out.insert(pid, pp);
        }
    }
    out
}

/// Parses `/proc/PID/stat`: after the command name in parentheses come state, ppid, pgrp
/// (proc(5)); the name may itself contain spaces and parentheses, so split at the last ')'.
fn read_stat(pid: u32) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

fn parse_stat(s: &str) -> Option<(u32, u32)> {
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// The processes of a watched command: everything in its process group and every descendant
/// of its leader (a descendant may have left the group with setsid).
pub fn tree(root: u32, pgid: u32) -> HashSet<u32> {
    let t = table();
    let mut set: HashSet<u32> = t
        .iter()
        .filter(|(_, (_, g))| *g == pgid)
        .map(|(p, _)| *p)
        .collect();
    set.insert(root);
    // Grow by parent links until nothing changes (the table is small: one pass per depth level).
    loop {
        let before = set.len();
        for (pid, (ppid, _)) in &t {
            if set.contains(ppid) {
                set.insert(*pid);
            }
        }
        if set.len() == before {
            break;
        }
    }
    set
}

/// Our direct live children (after the watched leader is gone these are orphans reparented to us).
pub fn children_of(parent: u32) -> Vec<u32> {
    table()
        .into_iter()
        .filter(|(_, (pp, _))| *pp == parent)
        .map(|(p, _)| p)
        .collect()
}

/// Makes this process the reaper of orphaned descendants (Linux `PR_SET_CHILD_SUBREAPER`), so a
/// grandchild whose parent dies is reparented to us and can be found and ended.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Reaps every exited child without blocking.
pub fn reap_zombies() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on any child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_names() {
        assert_eq!(parse_stat("123 (python) S 1 123 123 0 -1"), Some((1, 123)));
        assert_eq!(parse_stat("77 (a b) (c)) R 70 60 60 0"), Some((70, 60)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn tree_contains_self() {
        let me = std::process::id();
        // SAFETY: getpgrp has no arguments and cannot fail.
        let pg = unsafe { libc::getpgrp() } as u32;
        assert!(tree(me, pg).contains(&me));
    }
}
