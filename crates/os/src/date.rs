//! Dates for mail headers and mbox separators, in UTC, from seconds since the Unix epoch (callers
//! pass the time, so that tests can).

/// The calendar fields of a Unix time, in UTC.
struct Civil {
    year: i64,
    /// 1 to 12.
    month: usize,
    day: i64,
    /// 0 = Thursday (1970-01-01 was one).
    weekday: usize,
    hour: u64,
    minute: u64,
    second: u64,
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

fn civil(secs: u64) -> Civil {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as usize;
    Civil {
        year: yoe + era * 400 + i64::from(month <= 2),
        month,
        day,
        weekday: (days % 7) as usize,
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        second: rem % 60,
    }
}

/// `2026-11-26T07:29:05Z` (RFC 3339, UTC), for machine-read logs.
pub fn rfc3339(secs: u64) -> String {
    let c = civil(secs);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

/// `2026-11-26 07:29` (UTC), for lists.
pub fn short(secs: u64) -> String {
    let c = civil(secs);
    format!("{:04}-{:02}-{:02} {:02}:{:02}", c.year, c.month, c.day, c.hour, c.minute)
}

/// `2026-11-26` (UTC), for a day in a sentence.
pub fn day(secs: u64) -> String {
    let c = civil(secs);
    format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
}

/// Seconds since the epoch at the start (UTC) of a `YYYY-MM-DD` date.
pub fn parse_day(s: &str) -> Option<u64> {
    let mut it = s.trim().splitn(3, '-');
    let (y, m, d): (i64, i64, i64) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    // The inverse of `civil` (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400;
    // 2026-02-31 is not a date: it must come back as itself.
    (day(secs) == *s.trim()).then_some(secs)
}

/// `20261126T072950Z` (ISO 8601 basic format, UTC), for file names that sort by time.
pub fn compact(secs: u64) -> String {
    let c = civil(secs);
    format!("{:04}{:02}{:02}T{:02}{:02}{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

/// The inverse of `compact`.
pub fn parse_compact(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (day, time) = s.split_once('T')?;
    if day.len() != 8 || time.len() != 6 || !day.bytes().chain(time.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let start = parse_day(&format!("{}-{}-{}", &day[..4], &day[4..6], &day[6..]))?;
    let (h, m, sec): (u64, u64, u64) = (time[..2].parse().ok()?, time[2..4].parse().ok()?, time[4..].parse().ok()?);
    (h < 24 && m < 60 && sec < 60).then_some(start + h * 3600 + m * 60 + sec)
}

/// `Thu, 26 Nov 2026 07:29:50 +0000` (RFC 5322 section 3.3).
pub fn rfc5322(secs: u64) -> String {
    let c = civil(secs);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[c.weekday],
        c.day,
        MONTHS[c.month - 1],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// `Thu Nov 26 07:29:50 2026`, the asctime form of an mbox `From ` line.
pub fn asctime(secs: u64) -> String {
    let c = civil(secs);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        DAYS[c.weekday],
        MONTHS[c.month - 1],
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.year
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_round_trips() {
        for t in [0, 951_782_400, 1_795_678_190, 4_102_444_799] {
            assert_eq!(parse_compact(&compact(t)), Some(t), "{}", compact(t));
        }
        assert_eq!(compact(1_795_678_190), "20261126T072950Z");
        assert_eq!(parse_compact("20261126T246000Z"), None);
        assert_eq!(parse_compact("2026-11-26"), None);
    }

    #[test]
    fn short_dates_and_days() {
        assert_eq!(short(1_795_678_190), "2026-11-26 07:29");
        assert_eq!(parse_day("2026-11-26"), Some(1_795_651_200));
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("2024-02-29").map(short).as_deref(), Some("2024-02-29 00:00"));
        for bad in ["2026-02-31", "2026-13-01", "26-11-2026", "", "1969-12-31"] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322(1_795_678_190), "Thu, 26 Nov 2026 07:29:50 +0000");
        assert_eq!(asctime(1_795_678_190), "Thu Nov 26 07:29:50 2026");
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
    }
}
