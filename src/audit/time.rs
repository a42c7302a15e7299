//! Audit timestamps: microseconds since the Unix epoch, written as ISO-8601 UTC
//! (`2026-11-23T08:00:00.123456Z`) and read back from the ISO-8601 forms partners send.
//!
//! The conversion is done here, not by a general date library, so the canonical text of a
//! record's `ts` (which is hashed into the chain) is fixed by this file alone.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds in one day.
const MICROS_PER_DAY: u64 = 86_400 * 1_000_000;

/// Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar.
const EPOCH_SHIFT_DAYS: i64 = 719_468;

/// Days in a 400-year Gregorian era.
const DAYS_PER_ERA: i64 = 146_097;

/// The latest year accepted in a query (keeps every conversion inside `u64` microseconds).
const MAX_YEAR: i64 = 9999;

/// The current wall-clock time in microseconds since the Unix epoch (0 if the clock is
/// before 1970, which only a broken host reports).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The UTC day number (days since 1970-01-01) of a timestamp, which decides daily rotation.
pub fn utc_day(micros: u64) -> u64 {
    micros / MICROS_PER_DAY
}

/// Appends `micros` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` to `out`.
pub fn write_iso8601(micros: u64, out: &mut Vec<u8>) {
    let days = utc_day(micros);
    let in_day = micros % MICROS_PER_DAY;
    let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    let secs = in_day / 1_000_000;
    let fraction = in_day % 1_000_000;
    // Years before 1970 cannot occur (the input is unsigned), so every part is non-negative.
    push_padded(u64::try_from(year).unwrap_or(0), 4, out);
    out.push(b'-');
    push_padded(u64::try_from(month).unwrap_or(0), 2, out);
    out.push(b'-');
    push_padded(u64::try_from(day).unwrap_or(0), 2, out);
    out.push(b'T');
    push_padded(secs / 3600, 2, out);
    out.push(b':');
    push_padded((secs / 60) % 60, 2, out);
    out.push(b':');
    push_padded(secs % 60, 2, out);
    out.push(b'.');
    push_padded(fraction, 6, out);
    out.push(b'Z');
}

/// Appends `value` in decimal, zero-padded to at least `width` digits (as `{:0width$}`),
/// without allocating: records are encoded on the writer's hot path.
pub fn push_padded(value: u64, width: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let len = digits.len() - at;
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(len)));
    out.extend_from_slice(&digits[at..]);
}

/// `micros` as ISO-8601 UTC text.
pub fn format_iso8601(micros: u64) -> String {
    let mut out = Vec::with_capacity(27);
    write_iso8601(micros, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The UTC date of `micros` as `YYYYMMDD`, used in file names.
pub fn compact_date(micros: u64) -> String {
    let (year, month, day) = civil_from_days(i64::try_from(utc_day(micros)).unwrap_or(i64::MAX));
    format!("{year:04}{month:02}{day:02}")
}

/// Parses an ISO-8601 instant: `YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM[:SS[.fraction]]` followed
/// by `Z` or a `±HH:MM` offset (a space may stand for `T`). Returns microseconds since the
/// epoch in UTC; `None` for anything else, for impossible dates and for instants before 1970.
pub fn parse_iso8601(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let year = digits(bytes, 0, 4)?;
    if bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') {
        return None;
    }
    let month = digits(bytes, 5, 2)?;
    let day = digits(bytes, 8, 2)?;
    if !(1970..=MAX_YEAR).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
    {
        return None;
    }
    let date_micros = u64::try_from(days_from_civil(year, month, day))
        .ok()?
        .checked_mul(MICROS_PER_DAY)?;
    if bytes.len() == 10 {
        return Some(date_micros);
    }
    if !matches!(bytes.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = digits(bytes, 11, 2)?;
    if bytes.get(13) != Some(&b':') {
        return None;
    }
    let minute = digits(bytes, 14, 2)?;
    let mut at = 16;
    let mut second = 0;
    let mut fraction_micros = 0u64;
    if bytes.get(at) == Some(&b':') {
        second = digits(bytes, at + 1, 2)?;
        at += 3;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            let start = at;
            while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            let count = at - start;
            if count == 0 || count > 9 {
                return None;
            }
            for (index, digit) in bytes[start..at].iter().enumerate().take(6) {
                let place = 10u64.pow(5 - u32::try_from(index).ok()?);
                fraction_micros += u64::from(digit - b'0') * place;
            }
        }
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let offset_secs: i64 = match bytes.get(at) {
        Some(b'Z' | b'z') if bytes.len() == at + 1 => 0,
        Some(sign @ (b'+' | b'-')) if bytes.len() == at + 6 && bytes[at + 3] == b':' => {
            let hours = digits(bytes, at + 1, 2)?;
            let minutes = digits(bytes, at + 4, 2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        _ => return None,
    };
    let local_secs = hour * 3600 + minute * 60 + second;
    let utc_micros = i128::from(date_micros)
        + i128::from(local_secs - offset_secs) * 1_000_000
        + i128::from(fraction_micros);
    u64::try_from(utc_micros).ok()
}

/// `len` ASCII digits at `start` as a number.
fn digits(bytes: &[u8], start: usize, len: usize) -> Option<i64> {
    let slice = bytes.get(start..start + len)?;
    slice.iter().try_fold(0i64, |value, b| {
        b.is_ascii_digit().then(|| value * 10 + i64::from(b - b'0'))
    })
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - EPOCH_SHIFT_DAYS
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days.saturating_add(EPOCH_SHIFT_DAYS);
    let era = shifted.div_euclid(DAYS_PER_ERA);
    let day_of_era = shifted - era * DAYS_PER_ERA;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_iso8601(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-23T08:00:00Z
        assert_eq!(
            format_iso8601(1_795_420_800_000_000 + 123_456),
            "2026-11-23T08:00:00.123456Z"
        );
        // A leap day.
        assert_eq!(
            format_iso8601(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(compact_date(1_795_420_800_000_000), "20261123");
    }

    #[test]
    fn padded_numbers_match_the_standard_formatting() {
        for value in [0, 7, 42, 999, 1_000, 123_456, u64::MAX] {
            for width in [0, 2, 4, 6] {
                let mut out = Vec::new();
                push_padded(value, width, &mut out);
                assert_eq!(String::from_utf8(out).unwrap(), format!("{value:0width$}"));
            }
        }
    }

    #[test]
    fn parses_what_it_formats_and_common_offsets() {
        for micros in [
            0,
            951_782_400_000_000,
            1_795_420_800_123_456,
            4_102_444_799_999_999,
        ] {
            assert_eq!(parse_iso8601(&format_iso8601(micros)), Some(micros));
        }
        let noon_utc = parse_iso8601("2026-11-23T12:00:00Z").unwrap();
        assert_eq!(parse_iso8601("2026-11-23T12:00:00+00:00"), Some(noon_utc));
        assert_eq!(parse_iso8601("2026-11-23T13:30:00+01:30"), Some(noon_utc));
        assert_eq!(parse_iso8601("2026-11-23T07:00:00-05:00"), Some(noon_utc));
        assert_eq!(parse_iso8601("2026-11-23 12:00Z"), Some(noon_utc));
        assert_eq!(
            parse_iso8601("2026-11-23T12:00:00.5Z"),
            Some(noon_utc + 500_000)
        );
        assert_eq!(
            parse_iso8601("2026-11-23T12:00:00.123456789Z"),
            Some(noon_utc + 123_456)
        );
        assert_eq!(
            parse_iso8601("2026-11-23"),
            Some(noon_utc - 12 * 3600 * 1_000_000)
        );
    }

    #[test]
    fn refuses_malformed_and_impossible_instants() {
        for text in [
            "",
            "yesterday",
            "2026-11-23T12:00:00",
            "2026-11-23T12:00:00+0100",
            "2026-13-01",
            "2025-02-29",
            "2026-11-31",
            "2026-11-23T24:00:00Z",
            "2026-11-23T12:60:00Z",
            "2026-11-23T12:00:60Z",
            "2026-11-23T12:00:00.Z",
            "2026-11-23T12:00:00.1234567890Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00+00:01",
            "2026-11-23T12:00:00Zjunk",
            "２０２６-11-23",
        ] {
            assert_eq!(parse_iso8601(text), None, "{text}");
        }
    }

    #[test]
    fn day_numbers_round_trip_over_four_centuries() {
        for days in (0..146_097 * 2).step_by(17) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
