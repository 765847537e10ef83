//! A member's certificate close to expiry (or expired) is logged clearly: when it is loaded
//! (at start and whenever a renewed file is picked up, [`crate::tls`]) and again every hour
//! while the member runs ([`watch`]), so a member that has been up for months still says so
//! before its peers and clients start refusing it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A certificate expiring sooner than this is reported with a warning.
const SOON_SECS: i64 = 30 * 24 * 3600;

/// How often a running member checks its certificate files again, unless
/// `--cert-check-interval` says otherwise.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// How a certificate's validity ends, seen from `now` (seconds since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Valid for more than 30 days.
    Later,
    /// Expires within 30 days: seconds left.
    Soon(i64),
    /// Expired this many seconds ago.
    Expired(i64),
}

/// The expiry of a DER certificate at `now`; `None` if it cannot be parsed (rustls decides
/// whether it is usable).
pub fn expiry(der: &[u8], now: i64) -> Option<(Expiry, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let left = not_after - now;
    let e = if left < 0 {
        Expiry::Expired(-left)
    } else if left < SOON_SECS {
        Expiry::Soon(left)
    } else {
        Expiry::Later
    };
    Some((e, not_after))
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_date(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60, rem % 60)
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Logs the leaf certificate of `path` if it expires within 30 days (a warning) or has
/// expired (an error), naming the file and the date; returns what it found.
pub fn report(path: &Path, der: &[u8]) -> Option<Expiry> {
    let (e, not_after) = expiry(der, now())?;
    let date = utc_date(not_after);
    match e {
        Expiry::Expired(ago) => tracing::error!(
            cert = %path.display(),
            not_after = %date,
            "the certificate {} EXPIRED on {date} ({} days ago): peers and clients will refuse it; renew it (it is picked up without a restart)",
            path.display(),
            ago / 86_400
        ),
        Expiry::Soon(left) => tracing::warn!(
            cert = %path.display(),
            not_after = %date,
            "the certificate {} expires on {date} (in {} days {} hours): renew it (it is picked up without a restart)",
            path.display(),
            left / 86_400,
            (left % 86_400) / 3600
        ),
        Expiry::Later => {}
    }
    Some(e)
}

/// Reads the first certificate of the PEM file `path` and [`report`]s it. A file that
/// cannot be read is logged once per check (the TLS reload reports the details).
pub fn check_file(path: &Path) -> Option<Expiry> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let first = std::fs::read(path).ok().and_then(|bytes| CertificateDer::pem_slice_iter(&bytes).next());
    match first {
        Some(Ok(der)) => report(path, &der),
        _ => {
            tracing::warn!(cert = %path.display(), "cannot read the certificate file to check its expiry");
            None
        }
    }
}

/// Checks the certificate files `paths` every `every` (`--cert-check-interval`, an hour by
/// default) for as long as the runtime runs; the check at start is done when they are loaded.
pub fn watch(paths: Vec<PathBuf>, every: Duration) {
    if paths.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for p in &paths {
                check_file(p);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_after: (i32, u8, u8)) -> rcgen::Certificate {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert")
    }

    #[test]
    fn expired_soon_and_later() {
        // 2030-01-01T00:00:00Z
        let t2030 = 1_893_456_000;
        let der = cert((2030, 1, 1)).der().to_vec();
        assert_eq!(expiry(&der, t2030 + 86_400).map(|e| e.0), Some(Expiry::Expired(86_400)));
        assert_eq!(expiry(&der, t2030 - 3600).map(|e| e.0), Some(Expiry::Soon(3600)));
        assert_eq!(expiry(&der, t2030 - 60 * 86_400).map(|e| e.0), Some(Expiry::Later));
        assert_eq!(expiry(b"not a certificate", 0), None);
    }

    #[test]
    fn dates_in_utc() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(1_893_456_000), "2030-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
    }

    #[test]
    fn files_are_checked_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, cert((2001, 1, 1)).pem()).expect("write");
        assert!(matches!(check_file(&path), Some(Expiry::Expired(_))));
        std::fs::write(&path, cert((2999, 1, 1)).pem()).expect("write");
        assert_eq!(check_file(&path), Some(Expiry::Later));
        std::fs::write(&path, "garbage").expect("write");
        assert_eq!(check_file(&path), None);
    }
}
