//! The files a pod's containers will bind-mount: hostname, hosts, resolv.conf. Pure rendering
//! plus validation: every value that goes into a file is checked for newlines and length so a
//! request cannot inject extra lines (CVE-2022-4318's class).

/// Longest hostname (Linux's HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;
/// resolv.conf limits glibc honours (more are ignored, so more are refused).
pub const MAX_NAMESERVERS: usize = 3;
pub const MAX_SEARCHES: usize = 32;
pub const MAX_DNS_FIELD: usize = 253;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilesError {
    #[error("{field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

fn invalid(field: &'static str, value: &str, reason: &'static str) -> FilesError {
    FilesError::Invalid {
        field,
        value: value.chars().take(80).collect(),
        reason,
    }
}

/// RFC 1123 labels, as kubelet validates pod hostnames.
pub fn validate_hostname(h: &str) -> Result<(), FilesError> {
    if h.is_empty() || h.len() > MAX_HOSTNAME {
        return Err(invalid("hostname", h, "must be 1 to 64 characters"));
    }
    for label in h.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(invalid("hostname", h, "must be lower-case RFC 1123 labels"));
        }
    }
    Ok(())
}

fn field_ok(field: &'static str, v: &str) -> Result<(), FilesError> {
    if v.is_empty()
        || v.len() > MAX_DNS_FIELD
        || v.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            field,
            v,
            "must be non-empty, at most 253 bytes, without spaces or control characters",
        ));
    }
    Ok(())
}

/// resolv.conf from the CRI DNSConfig; None when the config says nothing (host's file is used).
pub fn resolv_conf(
    servers: &[String],
    searches: &[String],
    options: &[String],
) -> Result<Option<String>, FilesError> {
    if servers.is_empty() && searches.is_empty() && options.is_empty() {
        return Ok(None);
    }
    if servers.len() > MAX_NAMESERVERS {
        return Err(invalid(
            "dns_config.servers",
            &servers.join(","),
            "more than 3 nameservers",
        ));
    }
    if searches.len() > MAX_SEARCHES {
        return Err(invalid(
            "dns_config.searches",
            &searches.join(","),
            "more than 32 search domains",
        ));
    }
    let mut s = String::new();
    for ns in servers {
        field_ok("dns_config.servers", ns)?;
        if ns.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid("dns_config.servers", ns, "not an IP address"));
        }
        s.push_str(&format!("nameserver {ns}\n"));
    }
    for v in searches.iter().chain(options) {
        field_ok("dns_config", v)?;
    }
    if !searches.is_empty() {
        s.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    Ok(Some(s))
}

/// /etc/hosts for a pod with its own network namespace.
pub fn hosts(hostname: &str) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(validate_hostname("web-0").is_ok());
        assert!(validate_hostname("a.b-c.d").is_ok());
        for bad in ["", "UPPER", "-a", "a-", "a..b", "a\nb", &"a".repeat(65)] {
            assert!(validate_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolv() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(resolv_conf(&[], &[], &[]).unwrap(), None);
        assert_eq!(
            resolv_conf(
                &s(&["10.96.0.10"]),
                &s(&["default.svc.cluster.local", "svc.cluster.local"]),
                &s(&["ndots:5"])
            )
            .unwrap()
            .unwrap(),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        assert!(resolv_conf(&s(&["10.0.0.1\nnameserver 6.6.6.6"]), &[], &[]).is_err());
        assert!(resolv_conf(&s(&["dns.example"]), &[], &[]).is_err());
        assert!(resolv_conf(&[], &s(&["a\nb"]), &[]).is_err());
        assert!(resolv_conf(&[], &[], &s(&["x y"])).is_err());
        assert!(resolv_conf(&s(&["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"]), &[], &[]).is_err());
    }

    #[test]
    fn hosts_file() {
        let h = hosts("web-0");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("127.0.1.1\tweb-0\n"));
    }
}
