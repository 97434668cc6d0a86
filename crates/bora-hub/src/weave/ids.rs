//! Call ids and times as weave writes them: UUIDv7 ids (time-ordered, so a project's calls
//! sort by when they started) and `2026-12-07T23:48:45.401215Z` timestamps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bora_rng::SplitMix64;

/// Distinct streams for ids drawn in the same nanosecond (two threads, or a fast loop).
static DRAWS: AtomicU64 = AtomicU64::new(0);

fn random_u64() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let draw = DRAWS.fetch_add(1, Ordering::Relaxed);
    SplitMix64::new(
        nanos ^ u64::from(std::process::id()).rotate_left(32) ^ draw.wrapping_mul(bora_rng::GAMMA),
    )
    .next_u64()
}

/// `n` random bytes as lower-case hex (multipart boundaries).
pub(crate) fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", random_u64() as u8))
        .collect()
}

/// A UUIDv7 for a call or feedback started at `at`.
pub fn uuid7(at: SystemTime) -> String {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (a, b) = (random_u64(), random_u64());
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..8].copy_from_slice(&a.to_be_bytes()[..2]);
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    bytes[6] = 0x70 | (bytes[6] & 0x0f);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `at` in UTC with microseconds, as weave writes `started_at` and `ended_at`.
pub fn timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (year, month, day) = civil_date(secs / 86_400);
    let rest = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_micros()
    )
}

/// The calendar date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_weave() {
        // 2026-12-07T23:48:45.401215Z, a `started_at` of the recording.
        let at = UNIX_EPOCH + Duration::from_micros(1_796_687_325_401_215);
        assert_eq!(timestamp(at), "2026-12-07T23:48:45.401215Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn ids_are_version_7_and_ordered_by_time() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_687_325_401);
        let id = uuid7(at);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "7");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        // The recording's ids of that millisecond start with the same 48 bits.
        assert!(id.starts_with("01a252e8-e8d9-7"), "{id}");
        assert!(uuid7(at + Duration::from_millis(1)) > id);
        assert_ne!(uuid7(at), uuid7(at));
    }
}
