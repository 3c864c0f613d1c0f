//! Who holds a job: `host:boot:pidns:pid:start` — the host name, the kernel's boot id, the
//! pid namespace, the pid and its start time (clock ticks since boot) — so a restarted run can
//! tell a dead predecessor's leases on this host from a live worker's, anywhere.

/// This process's name in `jobs.locked_by`.
pub fn worker_name() -> String {
    let me = Me::read();
    let pid = std::process::id();
    match start_ticks(pid) {
        Some(start) => format!("{}:{}:{}:{pid}:{start}", me.host, me.boot, me.pidns),
        None => format!("{}:{pid}", me.host),
    }
}

/// What a holder must share with this process before its pid can be judged here: the same
/// host name, the same running kernel (boot id) and the same pid namespace, so the pid means
/// the same process for both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub host: String,
    pub boot: String,
    pub pidns: String,
}

impl Me {
    pub fn read() -> Self {
        Self {
            host: host(),
            boot: read_trimmed("/proc/sys/kernel/random/boot_id")
                .map(|b| b.replace('-', ""))
                .unwrap_or_default(),
            pidns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .and_then(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("pid:[")?.strip_suffix(']')?.to_string())
                })
                .unwrap_or_default(),
        }
    }
}

/// The host name (the kernel's, as `gethostname` gives it; the environment's as a fallback).
fn host() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().replace(':', "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether `holder` names a process that is gone: same host, kernel and pid namespace as
/// `me`, and its pid no longer exists (`kill(pid, 0)` says ESRCH) or now belongs to a process
/// started at another time. Anything else — another host, a container with its own pid
/// namespace, an unreadable start time, an old-style name — is never judged dead here: its
/// leases run out as before.
pub fn is_dead(holder: &str, me: &Me) -> bool {
    let mut parts = holder.rsplitn(5, ':');
    let (Some(start), Some(pid), Some(pidns), Some(boot), Some(host)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(start), Ok(pid)) = (start.parse::<u64>(), pid.parse::<i32>()) else {
        return false;
    };
    if me.boot.is_empty() || me.pidns.is_empty() {
        return false;
    }
    if host != me.host || boot != me.boot || pidns != me.pidns {
        return false;
    }
    let Some(raw) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    match rustix::process::test_kill_process(raw) {
        Err(rustix::io::Errno::SRCH) => true,
        // Alive (or not ours to signal, which is alive too): dead only if its start time
        // can be read and is another process's.
        _ => start_ticks(pid as u32).is_some_and(|now| now != start),
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_is_not_dead_a_gone_one_is_and_others_are_not_ours_to_judge() {
        let me = Me::read();
        let name = worker_name();
        assert_eq!(name.matches(':').count(), 4, "{name}");
        assert!(!is_dead(&name, &me), "ourselves");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_ticks(pid).unwrap();
        let holder = |start: u64| format!("{}:{}:{}:{pid}:{start}", me.host, me.boot, me.pidns);
        assert!(!is_dead(&holder(start), &me), "alive");
        assert!(
            is_dead(&holder(start + 1), &me),
            "the pid is another process's now"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(is_dead(&holder(start), &me), "gone");
        // Another host, kernel or pid namespace, or an old-style name: never judged here.
        let other = |host: &str, boot: &str, ns: &str| format!("{host}:{boot}:{ns}:{pid}:{start}");
        assert!(!is_dead(&other("elsewhere", &me.boot, &me.pidns), &me));
        assert!(!is_dead(&other(&me.host, "0000", &me.pidns), &me));
        assert!(!is_dead(&other(&me.host, &me.boot, "1"), &me));
        assert!(!is_dead(&format!("{}:{pid}", me.host), &me));
        assert!(!is_dead(&format!("{}:{pid}:{start}", me.host), &me));
    }
}
