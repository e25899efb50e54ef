//! Command-line values turned into typed ones: durations ("30d", "12h", "2w", "10s") and
//! dates (RFC 3339, or YYYY-MM-DD meaning midnight UTC), and PEM files of certificates.

use std::path::Path;

use certfleet_pki::Certificate;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime};

use crate::Error;

/// Parses a duration: a whole number followed by `s`, `m`, `h`, `d` or `w`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 30d, 12h, 2w or 10s"))?;
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?} is not a duration: the unit must be s, m, h, d or w")),
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::seconds)
        .ok_or_else(|| format!("{text:?} is too long a duration"))
}

/// Parses a date: RFC 3339 ("2027-01-31T12:00:00Z") or a day ("2027-01-31", midnight UTC).
pub fn parse_date(text: &str) -> Result<OffsetDateTime, String> {
    let text = text.trim();
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let day_format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text, &day_format)
        .map(|day| day.midnight().assume_utc())
        .map_err(|_| format!("{text:?} is not a date: use YYYY-MM-DD or RFC 3339"))
}

/// Reads every "CERTIFICATE" block of a PEM file; refuses a file with none, bad base64, or a
/// block that is not a certificate.
pub fn read_pem_certificates(path: &Path) -> Result<Vec<Certificate>, Error> {
    let bad = |reason: String| Error::BadPemFile { path: path.to_owned(), reason };
    let ders = CertificateDer::pem_file_iter(path)
        .map_err(|error| bad(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(error.to_string()))?;
    if ders.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    ders.into_iter().map(|der| Certificate::from_der(der.to_vec()).map_err(|error| bad(error.to_string()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let check = |text: &str, expected: Result<i64, &str>| {
            assert_eq!(
                parse_duration(text).map(|d| d.whole_seconds()).map_err(|e| e.to_string()),
                expected.map_err(str::to_owned),
                "{text}"
            );
        };
        check("30d", Ok(30 * 86_400));
        check("12h", Ok(12 * 3600));
        check("2w", Ok(14 * 86_400));
        check("10s", Ok(10));
        check("5m", Ok(300));
        check("0d", Ok(0));
        check("30", Err("\"30\" is not a duration: the unit must be s, m, h, d or w"));
        check("d", Err("\"d\" is not a duration such as 30d, 12h, 2w or 10s"));
        check("-3d", Err("\"-3d\" is not a duration such as 30d, 12h, 2w or 10s"));
        check("3y", Err("\"3y\" is not a duration: the unit must be s, m, h, d or w"));
        check("99999999999999999w", Err("\"99999999999999999w\" is too long a duration"));
    }

    #[test]
    fn dates() {
        let check = |text: &str, expected: Option<&str>| {
            assert_eq!(parse_date(text).ok().map(crate::describe::rfc3339).as_deref(), expected, "{text}");
        };
        check("2027-01-31", Some("2027-01-31T00:00:00Z"));
        check("2027-01-31T12:30:00Z", Some("2027-01-31T12:30:00Z"));
        check("2027-01-31T12:30:00+02:00", Some("2027-01-31T12:30:00+02:00"));
        check("2027-02-30", None);
        check("31/01/2027", None);
        check("", None);
    }
}
