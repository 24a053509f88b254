//! The pin layout: `<pin_dir>/v<LAYOUT_VERSION>/{maps,links}/`, and the link pins' file names
//! (`<iface>@<mode>`, percent-encoded where bpffs refuses a character).
use std::{
    fs,
    path::{Path, PathBuf},
};

use guard_common::LAYOUT_VERSION;

/// The versioned directory that holds this layout's pins.
pub fn versioned_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("v{LAYOUT_VERSION}"))
}

/// The pin file name of `iface`'s link: `<iface>@<mode>`, with `.`, `%` and `@` in the
/// interface name percent-encoded (bpffs refuses names with a dot, and `eth0.100` is the
/// usual name of a VLAN interface).
pub fn link_pin_name(iface: &str, mode: &str) -> String {
    let mut name = String::with_capacity(iface.len() + mode.len() + 1);
    for c in iface.chars() {
        match c {
            '.' => name.push_str("%2E"),
            '%' => name.push_str("%25"),
            '@' => name.push_str("%40"),
            c => name.push(c),
        }
    }
    name.push('@');
    name.push_str(mode);
    name
}

/// The interface and mode a link pin file name holds (the inverse of `link_pin_name`).
pub fn parse_link_pin_name(name: &str) -> Option<(String, String)> {
    let (encoded, mode) = name.rsplit_once('@')?;
    let mut iface = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(i) = rest.find('%') {
        iface.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        iface.push(char::from(u8::from_str_radix(code, 16).ok()?));
        rest = &rest[i + 3..];
    }
    iface.push_str(rest);
    Some((iface, mode.to_string()))
}

/// The pinned links under `links_dir`: (interface, mode, pin path).
pub fn link_pins(links_dir: &Path) -> Vec<(String, String, PathBuf)> {
    let Ok(rd) = fs::read_dir(links_dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            let (iface, mode) = parse_link_pin_name(e.file_name().to_str()?)?;
            Some((iface, mode, e.path()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_survive_dots_percents_and_ats() {
        for iface in ["eth0", "eth0.100", "bond0.7@x", "a%2Eb", "veth-1_2"] {
            let name = link_pin_name(iface, "native");
            assert!(
                !name[..name.rfind('@').unwrap()].contains(['.', '@']),
                "{name}"
            );
            assert_eq!(
                parse_link_pin_name(&name),
                Some((iface.to_string(), "native".to_string()))
            );
        }
        assert_eq!(parse_link_pin_name("noat"), None);
        assert_eq!(parse_link_pin_name("bad%zz@native"), None);
    }
}
