//! Parsers and checks for single values: port ranges, sizes, hosts.

use super::*;

pub fn parse_range(text: &str) -> Result<PortRange, String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| "expected FIRST-LAST".to_string())?;
    let parse = |s: &str| -> Result<u16, String> {
        let v: i64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not a number", s.trim()))?;
        if (1..=65535).contains(&v) {
            Ok(v as u16)
        } else {
            Err(format!("{v} is not a port number (1-65535)"))
        }
    };
    let (first, last) = (parse(a)?, parse(b)?);
    if first > last {
        return Err(format!("the range is reversed ({first} > {last})"));
    }
    Ok(PortRange { first, last })
}

/// Parses a Docker-style size: `2g`, `512m`, `64k` or bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1024u64),
        'm' => (&t[..t.len() - 1], 1024 * 1024),
        'g' => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Docker's image reference grammar: `[HOST[:PORT]/]PATH[:TAG][@DIGEST]`,
/// path components lower-case letters and digits joined by `.`, `_`, `__`
/// or `-`; at most 255 characters before the digest.
pub fn check_image(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("it is empty".to_string());
    }
    let (name_tag, digest) = match text.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (text, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return Err("its digest is not `ALGORITHM:HEX`".to_string());
        }
    }
    if name_tag.len() > 255 {
        return Err("it is longer than 255 characters".to_string());
    }
    // A tag follows the last `:` after the last `/`.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(
                "its tag must be letters, digits, `_`, `.` and `-` (at most 128)".to_string(),
            );
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first part is a registry when it has a `.` or a `:` or is `localhost`.
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let (host, port) = first.split_once(':').unwrap_or((first, ""));
            let host_ok = !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !host_ok || !port.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!("`{first}` is not a registry host"));
            }
            parts.remove(0);
        }
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars()
                .last()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && !p.contains("..")
            && !p.contains("___");
        if !ok {
            return Err(format!(
                "`{}` must be lower-case letters and digits joined by `.`, `_` or `-`",
                crate::model::excerpt(p, 80)
            ));
        }
    }
    Ok(())
}

/// A host is an IPv4/IPv6 address, a DNS name, or `local`.
pub fn check_host(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("it is empty".to_string());
    }
    match text.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(_)) => {
            return Err(
                "IPv6 addresses are not supported yet (Ray's addresses here are `host:port`)"
                    .to_string(),
            )
        }
        Ok(std::net::IpAddr::V4(ip)) => {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return Err(format!(
                    "{ip} is not the address of one machine (unspecified, broadcast or multicast)"
                ));
            }
            return Ok(());
        }
        Err(_) if text == "local" => return Ok(()),
        Err(_) => {}
    }
    if let Some((h, p)) = text.rsplit_once(':') {
        if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "it has a port (`:{p}`); the SSH port belongs in `[ssh] port`"
            ));
        }
    }
    if text.contains("://") {
        return Err("it looks like a URL".to_string());
    }
    if text.len() > 253 {
        return Err("it is longer than 253 characters".to_string());
    }
    let all_digits_and_dots = text.chars().all(|c| c.is_ascii_digit() || c == '.');
    if all_digits_and_dots {
        return Err("it is not a valid IPv4 address".to_string());
    }
    for label in text.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!("`{label}` is not a valid DNS label"));
        }
    }
    Ok(())
}
