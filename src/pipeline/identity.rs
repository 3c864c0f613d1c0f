//! Who holds a job: `host:pid:start` (start = the process's start time in clock ticks since
//! boot), so a restarted run can tell a dead predecessor's leases on this host from live ones.

/// This process's name in `jobs.locked_by`.
pub fn worker_name() -> String {
    let pid = std::process::id();
    match start_ticks(pid) {
        Some(start) => format!("{}:{pid}:{start}", host()),
        None => format!("{}:{pid}", host()),
    }
}

/// The host name as this process sees it.
pub fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether `holder` names a process of this host that is gone: its pid is not running, or
/// runs a different program started later (a reused pid). Holders of other hosts, and names
/// without a start time, are never judged dead here: their leases run out as before.
pub fn is_dead_here(holder: &str, this_host: &str) -> bool {
    let mut parts = holder.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(start), Ok(pid)) = (start.parse::<u64>(), pid.parse::<u32>()) else {
        return false;
    };
    host == this_host && pid != std::process::id() && start_ticks(pid) != Some(start)
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_is_not_dead_and_a_gone_one_is() {
        let host = host();
        let me = worker_name();
        assert_eq!(me.matches(':').count(), 2, "{me}");
        // Ourselves: never judged dead.
        assert!(!is_dead_here(&me, &host));
        // A live child with its true start time is alive; with another start time (a
        // reused pid) or after it exits, it is dead.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_ticks(pid).unwrap();
        assert!(!is_dead_here(&format!("{host}:{pid}:{start}"), &host));
        assert!(is_dead_here(&format!("{host}:{pid}:{}", start + 1), &host));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(is_dead_here(&format!("{host}:{pid}:{start}"), &host));
        // Another host's worker, or an old-style name: not ours to judge.
        assert!(!is_dead_here(&format!("elsewhere:{pid}:{start}"), &host));
        assert!(!is_dead_here(&format!("{host}:{pid}"), &host));
    }
}
