//! CNI results (0.4.0 and 1.x share the fields kelson reads) and CNI errors. Pure.

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// CIDR notation: `10.88.0.5/16`.
    pub address: String,
    #[serde(default)]
    pub gateway: Option<String>,
}

impl CniResult {
    /// Pod IPs without prefix length, IPv4 first (kubelet's primary), then the rest.
    pub fn pod_ips(&self) -> Vec<String> {
        let mut ips: Vec<String> = self
            .ips
            .iter()
            .filter_map(|i| i.address.split('/').next().map(str::to_owned))
            .filter(|a| {
                a.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| !ip.is_loopback())
            })
            .collect();
        ips.sort_by_key(|a| a.contains(':'));
        ips.dedup();
        ips
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniErrorBody {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_from_results() {
        let r: CniResult = serde_json::from_str(r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"fd00::5/64","interface":0},{"address":"10.88.0.5/16","gateway":"10.88.0.1","interface":0}]}"#).unwrap();
        assert_eq!(r.pod_ips(), ["10.88.0.5", "fd00::5"]);
        let old: CniResult = serde_json::from_str(
            r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.2/24"}]}"#,
        )
        .unwrap();
        assert_eq!(old.pod_ips(), ["10.1.0.2"]);
        let lo: CniResult =
            serde_json::from_str(r#"{"ips":[{"address":"127.0.0.1/8"},{"address":"::1/128"}]}"#)
                .unwrap();
        assert!(lo.pod_ips().is_empty(), "loopback is not a pod IP");
        let e: CniErrorBody =
            serde_json::from_str(r#"{"code":7,"msg":"no IP","details":"range full"}"#).unwrap();
        assert_eq!(e.code, 7);
    }
}
