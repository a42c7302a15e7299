//! Parsers for the values operators type on the command line: durations, rates, networks,
//! environments, BAA states and on/off switches.
//!
//! Each returns a one-line message clap shows next to the offending flag.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::keys::Env;
use crate::orgs::BaaStatus;

/// `90d`, `24h`, `15m`, `0s` (humantime syntax).
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (examples: 90d, 24h, 15m, 0s)"))
}

/// A duration of at least one second, in whole seconds rounded up.
pub fn positive_seconds(text: &str) -> Result<u64, String> {
    let parsed = duration(text)?;
    let seconds = parsed.as_secs() + u64::from(parsed.subsec_nanos() > 0);
    if seconds == 0 {
        return Err("must be longer than zero".to_owned());
    }
    Ok(seconds)
}

/// A grace period in whole seconds (zero allowed: the old secret stops at once).
pub fn grace_seconds(text: &str) -> Result<u64, String> {
    let parsed = duration(text)?;
    Ok(parsed.as_secs() + u64::from(parsed.subsec_nanos() > 0))
}

/// A sustained rate as requests per minute: `600/min`, `600/m`, `10/s`, `36000/h`, or a bare
/// number meaning per minute.
pub fn rate_per_minute(text: &str) -> Result<u32, String> {
    let (count, unit) = text.split_once('/').unwrap_or((text, "min"));
    let count: u64 = count
        .trim()
        .parse()
        .map_err(|_| format!("`{}` is not a whole number of requests", count.trim()))?;
    let per_minute = match unit.trim() {
        "s" | "sec" | "second" => count.checked_mul(60),
        "m" | "min" | "minute" => Some(count),
        "h" | "hour" if count.is_multiple_of(60) => Some(count / 60),
        "h" | "hour" => {
            return Err(
                "a per-hour rate must be a multiple of 60 (the limit is kept per minute)"
                    .to_owned(),
            )
        }
        _ => return Err("the unit after `/` is s, min or h (e.g. 600/min)".to_owned()),
    };
    match per_minute.and_then(|n| u32::try_from(n).ok()) {
        Some(0) => Err("the rate must be at least 1 request per minute".to_owned()),
        Some(n) => Ok(n),
        None => Err("the rate is too large".to_owned()),
    }
}

/// A burst size of at least one request.
pub fn burst(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("the burst must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err("the burst is a whole number of requests".to_owned()),
    }
}

/// A network in CIDR notation, or a single address (taken as `/32` or `/128`).
pub fn network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            "expected a network such as 10.0.0.0/8 or an address such as 10.1.2.3".to_owned()
        })
}

/// `test` or `live`.
pub fn env(text: &str) -> Result<Env, String> {
    text.parse()
        .map_err(|_| "expected `test` or `live`".to_owned())
}

/// `none`, `pending` or `signed`.
pub fn baa_status(text: &str) -> Result<BaaStatus, String> {
    match text {
        "none" => Ok(BaaStatus::None),
        "pending" => Ok(BaaStatus::Pending),
        "signed" => Ok(BaaStatus::Signed),
        _ => Err("expected `none`, `pending` or `signed`".to_owned()),
    }
}

/// `on` or `off`.
pub fn on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("expected `on` or `off`".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(positive_seconds("90d").unwrap(), 90 * 86_400);
        assert_eq!(positive_seconds("24h").unwrap(), 86_400);
        assert_eq!(positive_seconds("1500ms").unwrap(), 2);
        assert!(positive_seconds("0s").is_err());
        assert!(positive_seconds("soon").is_err());
        assert_eq!(grace_seconds("0s").unwrap(), 0);
        assert_eq!(grace_seconds("1h").unwrap(), 3600);
    }

    #[test]
    fn rates() {
        assert_eq!(rate_per_minute("600/min").unwrap(), 600);
        assert_eq!(rate_per_minute("600/m").unwrap(), 600);
        assert_eq!(rate_per_minute("600").unwrap(), 600);
        assert_eq!(rate_per_minute("10/s").unwrap(), 600);
        assert_eq!(rate_per_minute("3600/h").unwrap(), 60);
        for bad in [
            "0/min",
            "100/h",
            "x/min",
            "10/day",
            "-1/min",
            "99999999999/s",
            "",
        ] {
            assert!(rate_per_minute(bad).is_err(), "{bad:?}");
        }
        assert_eq!(burst("50").unwrap(), 50);
        assert!(burst("0").is_err());
        assert!(burst("many").is_err());
    }

    #[test]
    fn networks() {
        assert_eq!(network("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(network("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(network("::1").unwrap().to_string(), "::1/128");
        assert!(network("10.0.0.0/33").is_err());
        assert!(network("example.org").is_err());
    }

    #[test]
    fn words() {
        assert_eq!(env("live").unwrap(), Env::Live);
        assert!(env("prod").is_err());
        assert_eq!(baa_status("signed").unwrap(), BaaStatus::Signed);
        assert!(baa_status("Signed").is_err());
        assert!(on_off("on").unwrap());
        assert!(!on_off("off").unwrap());
        assert!(on_off("yes").is_err());
    }
}
