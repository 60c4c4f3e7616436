//! Just enough DER to read the subject alternative names of a client certificate that rustls
//! has already verified: the caller's identity is its URI SAN, else its DNS SAN.

/// The identity a verified client certificate names: the first URI SAN, else the first DNS
/// SAN.
pub fn caller_identity(cert_der: &[u8]) -> Option<String> {
    let names = subject_alt_names(cert_der)?;
    names
        .iter()
        .find(|(kind, _)| *kind == SanKind::Uri)
        .or_else(|| names.iter().find(|(kind, _)| *kind == SanKind::Dns))
        .map(|(_, name)| name.clone())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    Dns,
    Uri,
}

/// id-ce-subjectAltName, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// The DNS and URI names of the certificate's subjectAltName extension.
pub fn subject_alt_names(cert_der: &[u8]) -> Option<Vec<(SanKind, String)>> {
    let (_, certificate, _) = tlv(cert_der)?;
    let (_, tbs, _) = tlv(certificate)?;
    let mut rest = tbs;
    while !rest.is_empty() {
        let (tag, value, next) = tlv(rest)?;
        rest = next;
        // [3] EXPLICIT Extensions
        if tag != 0xa3 {
            continue;
        }
        let (_, mut extensions, _) = tlv(value)?;
        while !extensions.is_empty() {
            let (_, extension, next) = tlv(extensions)?;
            extensions = next;
            let (oid_tag, oid, mut fields) = tlv(extension)?;
            if oid_tag != 0x06 || oid != SAN_OID {
                continue;
            }
            // critical BOOLEAN DEFAULT FALSE, then the OCTET STRING
            let mut octets = None;
            while !fields.is_empty() {
                let (tag, value, next) = tlv(fields)?;
                fields = next;
                if tag == 0x04 {
                    octets = Some(value);
                }
            }
            let (_, mut general_names, _) = tlv(octets?)?;
            let mut names = Vec::new();
            while !general_names.is_empty() {
                let (tag, value, next) = tlv(general_names)?;
                general_names = next;
                let kind = match tag {
                    0x82 => SanKind::Dns,
                    0x86 => SanKind::Uri,
                    _ => continue,
                };
                names.push((kind, std::str::from_utf8(value).ok()?.to_owned()));
            }
            return Some(names);
        }
    }
    Some(Vec::new())
}

/// One tag-length-value: (tag, value, what follows). Single-byte tags only, which is all a
/// certificate uses.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = names;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn uri_san_wins_over_dns_san() {
        let der = cert(vec![
            rcgen::SanType::DnsName("client.example".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap()),
        ]);
        assert_eq!(
            caller_identity(&der).as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
    }

    #[test]
    fn dns_san_when_there_is_no_uri() {
        let der = cert(vec![rcgen::SanType::DnsName(
            "client.example".try_into().unwrap(),
        )]);
        assert_eq!(caller_identity(&der).as_deref(), Some("client.example"));
    }

    #[test]
    fn no_san_no_identity_and_garbage_is_refused() {
        assert_eq!(caller_identity(&cert(vec![])), None);
        assert_eq!(caller_identity(&[0x30, 0x85, 1, 2]), None);
        assert_eq!(caller_identity(&[]), None);
    }
}
