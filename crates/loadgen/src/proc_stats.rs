//! A process's CPU time and memory, read from `/proc` (Linux), and the load tool's own limit on
//! open files.

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux we run on).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds the process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User plus system CPU seconds the calling thread has used so far.
pub fn thread_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/thread-self/stat").ok()?)
}

fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces: count fields after its closing parenthesis.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

/// The peak resident set size (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// The current resident set size (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The soft and hard limits on open files from the text of `/proc/<pid>/limits`
/// (`unlimited` reads as `u64::MAX`).
pub fn parse_open_files_limit(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..].split_whitespace().map(|value| match value {
        "unlimited" => Some(u64::MAX),
        number => number.parse().ok(),
    });
    Some((values.next()??, values.next()??))
}

/// Makes sure this process may open `needed` files: raises its soft RLIMIT_NOFILE up to the hard
/// limit if needed, through util-linux's `prlimit` on our own PID (the crate forbids `unsafe`,
/// so no `setrlimit` call). Returns the soft limit in force afterwards.
pub fn raise_open_files_limit(needed: u64) -> Option<u64> {
    let read = || parse_open_files_limit(&std::fs::read_to_string("/proc/self/limits").ok()?);
    let (soft, hard) = read()?;
    if soft >= needed {
        return Some(soft);
    }
    let target = needed.min(hard);
    let _ = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={target}:"))
        .stderr(std::process::Stdio::null())
        .status();
    read().map(|(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        let mut spin = 0u64;
        for index in 0..2_000_000u64 {
            spin = spin.wrapping_add(index * index);
        }
        assert!(spin > 0);
        assert!(cpu_seconds(pid).is_some_and(|seconds| seconds >= 0.0));
        assert!(thread_cpu_seconds().is_some_and(|seconds| seconds >= 0.0));
        assert!(peak_rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert_eq!(cpu_seconds(u32::MAX), None);
    }

    #[test]
    fn open_files_limits() {
        let check =
            |text: &str, expected: Option<(u64, u64)>| assert_eq!(parse_open_files_limit(text), expected, "{text}");
        check(
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max cpu time              unlimited            unlimited            seconds   \n\
             Max open files            1024                 524288               files     \n",
            Some((1024, 524288)),
        );
        check("Max open files            unlimited            unlimited            files", Some((u64::MAX, u64::MAX)));
        check("Max processes             1024                 1024                 processes", None);
        check("Max open files            many                 1024                 files", None);
    }
}
