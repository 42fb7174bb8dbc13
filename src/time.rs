//! Time as keygate stores and shows it: unix seconds, formatted as RFC 3339
//! UTC without a calendar dependency, and durations as Go prints them (the
//! form of OpenAI's `x-ratelimit-reset-*` headers and 429 texts).

/// Unix seconds.
pub type Timestamp = i64;

/// `2026-11-20T14:02:00Z`.
pub fn rfc3339(ts: Timestamp) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Reads an ISO 8601 / RFC 3339 date-time (`2025-01-31T12:00:00`, with `T`
/// or a space, optional fractions, `Z` or `+hh:mm`; no zone means UTC), or a
/// bare date, as other gateways' exports write them.
pub fn parse_datetime(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    let num = |s: &str| -> Option<i64> { s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok()).flatten() };
    let (date, rest) = text.split_at(text.find(['T', 't', ' ']).unwrap_or(text.len()));
    let mut parts = date.split('-');
    let (y, m, d) = (num(parts.next()?)?, num(parts.next()?)?, num(parts.next()?)?);
    if parts.next().is_some() || !(0..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let rest = rest.get(1..).unwrap_or("");
    let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    let mut hms = clock.split('.').next().unwrap_or("").split(':');
    let (h, mi, s) = match (hms.next().filter(|h| !h.is_empty()), hms.next(), hms.next()) {
        (None, _, _) => (0, 0, 0),
        (Some(h), Some(mi), s) => (num(h)?, num(mi)?, s.map_or(Some(0), num)?),
        _ => return None,
    };
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let offset = match offset {
        "" | "Z" | "z" => 0,
        o => {
            // `+hh:mm`, `+hhmm` or `+hh`.
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let digits: String = o[1..].chars().filter(|c| *c != ':').collect();
            if !matches!(digits.len(), 2 | 4) {
                return None;
            }
            let (oh, om) = (num(&digits[..2])?, if digits.len() == 4 { num(&digits[2..])? } else { 0 });
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats microseconds as Go's `time.Duration` prints them (`120ms`, `1.78s`, `6m0s`).
pub fn go_duration(us: i64) -> String {
    let us = us.max(0);
    if us == 0 {
        return "0s".into();
    }
    let trim = |whole: i64, frac: i64, digits: usize, unit: &str| {
        let frac = format!("{frac:0digits$}");
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            format!("{whole}{unit}")
        } else {
            format!("{whole}.{frac}{unit}")
        }
    };
    if us < 1_000 {
        return format!("{us}µs");
    }
    if us < 1_000_000 {
        return trim(us / 1_000, us % 1_000, 3, "ms");
    }
    let (h, rest) = (us / 3_600_000_000, us % 3_600_000_000);
    let (m, rest) = (rest / 60_000_000, rest % 60_000_000);
    let seconds = trim(rest / 1_000_000, rest % 1_000_000, 6, "s");
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::{go_duration, rfc3339};

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_711_471_533), "2024-03-26T16:45:33Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn go_durations_look_like_openais() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(8_000), "8ms");
        assert_eq!(go_duration(120_000), "120ms");
        assert_eq!(go_duration(1_780_000), "1.78s");
        assert_eq!(go_duration(20_000_000), "20s");
        assert_eq!(go_duration(360_000_000), "6m0s");
        assert_eq!(go_duration(3_723_500_000), "1h2m3.5s");
        assert_eq!(go_duration(1_500), "1.5ms");
    }
}
