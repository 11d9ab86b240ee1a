//! Strict checks of the cron schedules and the time zone the maintenance CronJobs take: the
//! CRD's patterns admit any five words, and a CronJob the API server then refuses would block
//! every later apply of the installation.

/// Why a schedule is refused, naming the field.
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    let s = schedule.trim();
    if let Some(macro_) = s.strip_prefix('@') {
        return match macro_ {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            _ => Err(format!(
                "{s:?} is not a known macro (@hourly, @daily, @weekly, @monthly, @yearly)"
            )),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("{s:?} has {} fields, not five", fields.len()));
    }
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    let specs: [(&str, u32, u32, &[&str], bool); 5] = [
        ("minute", 0, 59, &[], false),
        ("hour", 0, 23, &[], false),
        ("day of month", 1, 31, &[], true),
        ("month", 1, 12, &MONTHS, false),
        ("day of week", 0, 7, &DAYS, true),
    ];
    for (field, (what, min, max, names, question)) in fields.iter().zip(specs) {
        check_field(field, min, max, names, question)
            .map_err(|e| format!("{s:?}: {what} {field:?}: {e}"))?;
    }
    Ok(())
}

fn check_field(
    field: &str,
    min: u32,
    max: u32,
    names: &[&str],
    question: bool,
) -> Result<(), String> {
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            // Month names count from 1, day names from 0.
            return Ok(i as u32 + min);
        }
        let n: u32 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
        if n < min || n > max {
            return Err(format!("{n} is outside {min}-{max}"));
        }
        Ok(n)
    };
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if let Some(step) = step {
            let n: u32 = step
                .parse()
                .map_err(|_| format!("step {step:?} is not a number"))?;
            if n == 0 || n > max {
                return Err(format!("step {n} is outside 1-{max}"));
            }
        }
        match range {
            "*" => {}
            "?" if question && step.is_none() => {}
            r => match r.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (value(a)?, value(b)?);
                    if a > b {
                        return Err(format!("range {r:?} runs backwards"));
                    }
                }
                None => {
                    value(r)?;
                }
            },
        }
    }
    Ok(())
}

/// Whether `zone` is a time zone name the CronJob controller can load (the IANA database).
pub fn check_time_zone(zone: &str) -> Result<(), String> {
    jiff::tz::TimeZone::get(zone).map(|_| ()).map_err(|_| {
        format!("{zone:?} is not an IANA time zone name (such as UTC or Europe/Berlin)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_the_cronjob_controller() {
        for ok in [
            "0 3 * * *",
            "*/15 * * * *",
            "30 0 1,15 * MON-FRI",
            "0 0 ? * sun",
            "5 4 * JAN-MAR 0",
            "0 22 * * 1-5/2",
            "@daily",
            "@hourly",
        ] {
            assert_eq!(check_schedule(ok), Ok(()), "{ok}");
        }
        for bad in [
            "61 25 * * *",
            "0 24 * * *",
            "0 0 0 * *",
            "0 0 * 13 *",
            "0 0 * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "0 0 * *",
            "a b c d e",
            "? * * * *",
            "@sometimes",
        ] {
            assert!(check_schedule(bad).is_err(), "{bad}");
        }
        let e = check_schedule("61 25 * * *").unwrap_err();
        assert!(e.contains("minute") && e.contains("61"), "{e}");
    }

    #[test]
    fn time_zones_come_from_the_iana_database() {
        for ok in [
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
        ] {
            assert_eq!(check_time_zone(ok), Ok(()), "{ok}");
        }
        for bad in ["Mars/Olympus", "Europe/Berlinn", "utc+5"] {
            assert!(check_time_zone(bad).is_err(), "{bad}");
        }
    }
}
