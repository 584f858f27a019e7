//! Reading and writing `/proc/sys` (the calling thread's network namespace).

use std::fs;

use super::error::PlumbingError;

pub(crate) fn conf_path(ifname: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{ifname}/{key}")
}

pub(crate) const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
pub(crate) const ALL_RP_FILTER: &str = "/proc/sys/net/ipv4/conf/all/rp_filter";

pub(crate) fn read_sysctl(path: &str) -> Result<String, PlumbingError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| PlumbingError::Sysctl {
            path: path.to_owned(),
            source,
        })
}

pub(crate) fn write_sysctl(path: &str, value: &str) -> Result<(), PlumbingError> {
    fs::write(path, value).map_err(|source| PlumbingError::Sysctl {
        path: path.to_owned(),
        source,
    })
}
