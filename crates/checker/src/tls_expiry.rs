//! The expiry of a server's leaf certificate, read from its DER with a minimal walk:
//! `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
//! serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... } }`.
//!
//! Twenty lines of DER beat a full X.509 parser as a dependency for one field; the handshake
//! has already verified the certificate (or failed) by the time this runs.

use rustls::pki_types::CertificateDer;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The certificate's `notAfter`, or `None` when the DER is not the X.509 shape expected.
pub(crate) fn not_after(certificate: &CertificateDer<'_>) -> Option<OffsetDateTime> {
    let (tag, certificate, _) = tlv(certificate.as_ref())?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = tlv(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut expected = [VERSION, INTEGER, SEQUENCE, SEQUENCE, SEQUENCE]
        .into_iter()
        .peekable();
    let validity = loop {
        let (tag, value, rest) = tlv(tbs)?;
        tbs = rest;
        // The version is optional (absent means v1).
        if tag != VERSION && expected.peek() == Some(&VERSION) {
            expected.next();
        }
        if expected.next()? != tag {
            return None;
        }
        if expected.peek().is_none() {
            break value;
        }
    };
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, value, _) = tlv(after_not_before)?;
    parse_time(tag, std::str::from_utf8(value).ok()?)
}

/// One DER tag-length-value: `(tag, value, the bytes after it)`. Single-byte tags only,
/// which is all the certificate fields walked here use.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let (bytes, after) = rest.split_at(octets);
        rest = after;
        bytes
            .iter()
            .fold(0_usize, |n, &b| (n << 8) | usize::from(b))
    };
    if rest.len() < length {
        return None;
    }
    let (value, after) = rest.split_at(length);
    Some((tag, value, after))
}

/// `YYMMDDHHMMSSZ` (UTCTime, years 1950 to 2049) or `YYYYMMDDHHMMSSZ` (GeneralizedTime).
fn parse_time(tag: u8, text: &str) -> Option<OffsetDateTime> {
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy: i32 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest[i..i + 2].parse::<u8>().ok();
    let date = Date::from_calendar_date(year, Month::try_from(field(0)?).ok()?, field(2)?).ok()?;
    let time = Time::from_hms(field(4)?, field(6)?, field(8)?).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn certificate(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
    }

    #[test]
    fn reads_utc_time() {
        // `openssl x509 -enddate`: notAfter=Nov 25 13:29:27 2036 GMT
        let cert = certificate(include_str!("../tests/fixtures/self-signed.pem"));
        assert_eq!(
            not_after(&cert),
            Some(time::macros::datetime!(2036-11-25 13:29:27 UTC))
        );
    }

    #[test]
    fn reads_generalized_time() {
        // notAfter=Nov  4 13:29:27 2126 GMT: past 2049, so GeneralizedTime.
        let cert = certificate(include_str!("../tests/fixtures/far-future.pem"));
        assert_eq!(
            not_after(&cert),
            Some(time::macros::datetime!(2126-11-04 13:29:27 UTC))
        );
    }

    #[test]
    fn rejects_what_is_not_a_certificate() {
        assert_eq!(not_after(&CertificateDer::from(vec![])), None);
        assert_eq!(
            not_after(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])),
            None
        );
        assert_eq!(not_after(&CertificateDer::from(vec![0x04, 0x00])), None);
        let mut truncated = certificate(include_str!("../tests/fixtures/self-signed.pem"))
            .as_ref()
            .to_vec();
        truncated.truncate(60);
        assert_eq!(not_after(&CertificateDer::from(truncated)), None);
    }

    #[test]
    fn parses_both_time_forms() {
        assert_eq!(
            parse_time(UTC_TIME, "491231235959Z"),
            Some(time::macros::datetime!(2049-12-31 23:59:59 UTC))
        );
        assert_eq!(
            parse_time(UTC_TIME, "500101000000Z"),
            Some(time::macros::datetime!(1950-01-01 0:00 UTC))
        );
        assert_eq!(parse_time(UTC_TIME, "5001010000Z"), None);
        assert_eq!(parse_time(GENERALIZED_TIME, "20261301000000Z"), None);
        assert_eq!(parse_time(GENERALIZED_TIME, "20260101000000"), None);
    }
}
