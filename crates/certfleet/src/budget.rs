//! The process's file-descriptor budget, split between the listeners so that neither can starve
//! the other: the API and the device gateway each get their own connection limit, and together
//! with a reserve (registry connections, log and data files, the metrics listener, outbound
//! requests) they stay below the open-files limit read at start.

use anyhow::bail;

/// Descriptors kept for everything that is not a client connection.
pub const RESERVED_DESCRIPTORS: u64 = 512;

/// The gateway's limit when none is configured and the process allows more.
pub const DEFAULT_MQTT_MAX_CONNECTIONS: u64 = 100_000;

/// The connection limits a server runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub api_connections: usize,
    pub mqtt_connections: usize,
}

/// Splits `open_files` (the soft RLIMIT_NOFILE) between the listeners. A limit the operator
/// configured that cannot be honoured refuses to start; the gateway's default shrinks to what
/// fits (the caller warns when it does).
pub fn split(open_files: u64, api_connections: usize, mqtt_connections: Option<usize>) -> anyhow::Result<Budget> {
    let usable = open_files.saturating_sub(RESERVED_DESCRIPTORS);
    let api = api_connections as u64;
    if api == 0 {
        bail!("api.max_connections must be at least 1");
    }
    if api >= usable {
        bail!(
            "api.max_connections = {api} does not fit the open-files limit {open_files} \
             ({RESERVED_DESCRIPTORS} are kept for files and the registry); lower it or raise the limit"
        );
    }
    let room = usable - api;
    let mqtt = match mqtt_connections {
        Some(configured) if configured as u64 > room => bail!(
            "mqtt.max_connections = {configured} and api.max_connections = {api} need more than the \
             open-files limit {open_files} allows ({RESERVED_DESCRIPTORS} are kept for files and the registry); \
             lower them or raise the limit (ulimit -n)"
        ),
        Some(0) => bail!("mqtt.max_connections must be at least 1"),
        Some(configured) => configured as u64,
        None => room.min(DEFAULT_MQTT_MAX_CONNECTIONS),
    };
    Ok(Budget { api_connections: api as usize, mqtt_connections: mqtt as usize })
}

/// The soft and hard open-files limits of this process, from `/proc/self/limits` (Linux), or
/// `None` where that cannot be read.
pub fn open_files_limit() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_limits(&text)
}

fn parse_limits(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|line| line.starts_with("Max open files"))?;
    let mut numbers = line["Max open files".len()..].split_whitespace();
    let parse = |value: Option<&str>| match value? {
        "unlimited" => Some(u64::MAX),
        number => number.parse().ok(),
    };
    Some((parse(numbers.next())?, parse(numbers.next())?))
}

/// Raises the soft open-files limit to the hard one with `prlimit(1)` (the workspace forbids
/// `unsafe`, so no `setrlimit` call), and answers the limits in force afterwards.
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    let (soft, hard) = open_files_limit()?;
    if soft >= hard {
        return Some((soft, hard));
    }
    let raised = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(raised, Ok(status) if status.success()) {
        tracing::warn!(soft, hard, "could not raise the open-files limit to its hard limit (prlimit)");
    }
    open_files_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(open_files: u64, api: usize, mqtt: Option<usize>, expected: Result<(usize, usize), &str>) {
        let got = split(open_files, api, mqtt);
        match (got, expected) {
            (Ok(budget), Ok((api, mqtt))) => {
                assert_eq!((budget.api_connections, budget.mqtt_connections), (api, mqtt));
            }
            (Err(error), Err(needle)) => assert!(error.to_string().contains(needle), "{error}"),
            (got, expected) => panic!("{open_files} {api} {mqtt:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn budgets() {
        check(20_000, 1024, None, Ok((1024, 20_000 - 512 - 1024)));
        check(1_048_576, 1024, None, Ok((1024, 100_000)));
        check(20_000, 1024, Some(10_000), Ok((1024, 10_000)));
        check(20_000, 1024, Some(100_000), Err("mqtt.max_connections = 100000"));
        check(20_000, 19_600, None, Err("api.max_connections = 19600"));
        check(1024, 1024, None, Err("does not fit"));
        check(20_000, 0, None, Err("at least 1"));
        check(20_000, 10, Some(0), Err("at least 1"));
    }

    #[test]
    fn the_sum_never_exceeds_the_limit() {
        for open_files in [1024u64, 4096, 20_000, 65_536] {
            let budget = split(open_files, 256, None).unwrap();
            assert!((budget.api_connections + budget.mqtt_connections) as u64 + RESERVED_DESCRIPTORS <= open_files);
        }
    }

    #[test]
    fn proc_limits_are_read() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 20000                files     \n";
        assert_eq!(parse_limits(text), Some((1024, 20_000)));
        assert_eq!(parse_limits("Max open files  unlimited unlimited files"), Some((u64::MAX, u64::MAX)));
        assert_eq!(parse_limits("nothing here"), None);
    }
}
