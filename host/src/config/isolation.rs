//! The settings of isolation: where a plugin runs (`isolation = "process"`), and the
//! resource limits of its worker process (`memory = "256MiB"`, `cpu = "50%"`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a plugin runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Isolation {
    /// In the host's process: a call costs an indirect function call, but a crash, an abort
    /// or a call that never returns takes the host down (or wedges it).
    #[default]
    #[serde(rename = "in-process")]
    InProcess,
    /// In a worker process of its own (Linux): a call costs a round trip between processes
    /// (microseconds), and a crash, a hang or a memory bomb costs only the plugin, which is
    /// restarted. Resource limits apply.
    #[serde(rename = "process")]
    Process,
}

/// An amount of memory: `"256MiB"`, `"1GiB"`, `"64MB"`, or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "toml::Value", into = "u64")]
pub struct ByteSize(pub u64);

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> u64 {
        size.0
    }
}

impl TryFrom<toml::Value> for ByteSize {
    type Error = String;
    fn try_from(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Integer(n) if n > 0 => Ok(ByteSize(n as u64)),
            toml::Value::String(text) => text.parse(),
            other => Err(format!(
                "expected an amount of memory such as \"256MiB\", found {other}"
            )),
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let bad = || {
            format!(
                "{text:?} is not an amount of memory: write a number and a unit, such as \
                 \"256MiB\" or \"1GiB\" (units B, KiB, MiB, GiB, KB, MB, GB)"
            )
        };
        let number: f64 = number.parse().map_err(|_| bad())?;
        let scale: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "KiB" | "K" | "k" => 1024.0,
            "MiB" | "M" => 1024.0 * 1024.0,
            "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            _ => return Err(bad()),
        };
        let bytes = number * scale;
        if !(1.0..=u64::MAX as f64).contains(&bytes) {
            return Err(bad());
        }
        Ok(ByteSize(bytes as u64))
    }
}

/// A CPU limit: `"50%"` of one CPU (needs a cgroup), or CPU time in all, `"10m"` (a resource
/// limit: the worker is killed when it has used that much).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CpuLimit {
    /// A share of one CPU: 0.5 for `"50%"`, 2.0 for `"200%"`.
    Share(f64),
    /// CPU time in all.
    Time(Duration),
}

impl TryFrom<String> for CpuLimit {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let trimmed = text.trim();
        if let Some(percent) = trimmed.strip_suffix('%') {
            return match percent.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p.is_finite() => Ok(CpuLimit::Share(p / 100.0)),
                _ => Err(format!(
                    "{text:?}: a CPU share must be a percentage above 0"
                )),
            };
        }
        match humantime::parse_duration(trimmed) {
            Ok(time) if time >= Duration::from_secs(1) => Ok(CpuLimit::Time(time)),
            _ => Err(format!(
                "{text:?} is not a CPU limit: write a share of one CPU (\"50%\") or CPU time \
                 in all (\"10m\", at least 1s)"
            )),
        }
    }
}

impl From<CpuLimit> for String {
    fn from(limit: CpuLimit) -> String {
        match limit {
            CpuLimit::Share(share) => format!("{}%", share * 100.0),
            CpuLimit::Time(time) => humantime::format_duration(time).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_amounts_read_as_people_write_them() {
        let read = |t: &str| t.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(read("256MiB"), Ok(256 << 20));
        assert_eq!(read("1.5 GiB"), Ok(3 << 29));
        assert_eq!(read("64MB"), Ok(64_000_000));
        assert_eq!(read("4096"), Ok(4096));
        assert!(read("lots").unwrap_err().contains("\"256MiB\""));
        assert!(read("0MiB").is_err());
        assert!(read("12 parsecs").is_err());
    }

    #[test]
    fn cpu_limits_are_a_share_or_a_time() {
        let read = |t: &str| CpuLimit::try_from(t.to_owned());
        assert_eq!(read("50%"), Ok(CpuLimit::Share(0.5)));
        assert_eq!(read("2m"), Ok(CpuLimit::Time(Duration::from_secs(120))));
        assert!(read("0%").is_err());
        assert!(read("fast").unwrap_err().contains("\"50%\""));
    }
}
