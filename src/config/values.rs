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
        Ok(_) => return Ok(()),
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
