//! Which addresses the proxy dials for a name it resolved itself: the guard
//! against server-side request forgery.
//!
//! A route names a host, not an address. Its DNS answer is whatever the
//! name's owner (or whoever controls `*.example-cloud.com`'s subdomains, or
//! a rebinding resolver) says, so without a check an agent could make the
//! proxy dial cloud metadata (169.254.169.254), the proxy's own loopback,
//! the Docker bridge gateway or any other internal service — and on a
//! `plain_http` route no TLS name check stops the answer from reaching it.
//! So a resolved address that is not a global unicast one is refused unless
//! the config allows its network (`upstream.allow_internal`). What the user
//! named themselves — a `resolve` override, a route or passthrough host that
//! is an IP literal — is dialled as named.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is not one the proxy dials by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// A cloud's instance metadata or credential service (credentials of
    /// the machine the proxy runs on): [`METADATA`].
    Metadata,
    /// 127.0.0.0/8, ::1: the proxy's own machine.
    Loopback,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 0.0.0.0/8, :: (on Linux, a connect to them reaches loopback).
    Unspecified,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10 (carrier-grade NAT; some clouds' internal services).
    SharedAddressSpace,
    /// fc00::/7.
    UniqueLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// A global address of the proxy's own machine (found once connected:
    /// the connection's two ends have the same address). It reaches every
    /// service listening on all interfaces, past any firewall outside.
    ThisMachine,
    /// Not routable on the internet: 192.0.0.0/24, the documentation and
    /// benchmarking ranges, 240.0.0.0/4, and IPv6 prefixes reserved the same
    /// way (documentation, discard-only).
    Reserved,
}

impl AddrClass {
    /// A short name for messages and the audit log.
    pub fn describe(self) -> &'static str {
        match self {
            AddrClass::Metadata => "cloud metadata",
            AddrClass::Loopback => "loopback",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Private => "private",
            AddrClass::SharedAddressSpace => "shared (carrier-grade NAT)",
            AddrClass::UniqueLocal => "unique local (private IPv6)",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Reserved => "reserved",
            AddrClass::ThisMachine => "this machine's own",
        }
    }
}

impl AddrClass {
    /// The class as a noun phrase, article included ("a loopback address").
    pub fn an_address(self) -> String {
        match self {
            AddrClass::Unspecified => "an unspecified address".into(),
            AddrClass::ThisMachine => "an address of the proxy's own machine".into(),
            c => format!("a {c} address"),
        }
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Addresses where clouds hand a machine (or a container task) its
/// credentials. Each must be allowed on its own (`/32`, `/128`), never by a
/// wider network; one of them (Azure's) is not even in an internal range.
const METADATA: [IpAddr; 13] = [
    // AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack: instance metadata.
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // AWS ECS task role credentials, EKS Pod Identity.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    // Tencent Cloud, Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(169, 254, 0, 23)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Azure's WireServer (a public address every Azure VM reaches).
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    // GKE's metadata server, Scaleway's metadata.
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 252)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 42, 42)),
    // Oracle's (169.254.169.254 over IPv6), Scaleway's over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xc1, 0, 0, 0, 0, 0xa9fe, 0xa9fe)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x42, 0, 0, 0, 0, 0, 0x42)),
    // AWS (IMDS, EKS Pod Identity) and GCP over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
    IpAddr::V6(Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
];

fn classify_v4(ip: Ipv4Addr) -> Option<AddrClass> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if METADATA.contains(&IpAddr::V4(ip)) => AddrClass::Metadata,
        _ if ip.is_broadcast() => AddrClass::Broadcast,
        (0, ..) => AddrClass::Unspecified,
        (127, ..) => AddrClass::Loopback,
        (169, 254, _) => AddrClass::LinkLocal,
        (10, ..) | (192, 168, _) => AddrClass::Private,
        (172, 16..=31, _) => AddrClass::Private,
        (100, 64..=127, _) => AddrClass::SharedAddressSpace,
        (224..=239, ..) => AddrClass::Multicast,
        (240..=255, ..) => AddrClass::Reserved,
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddrClass::Reserved,
        (198, 18..=19, _) => AddrClass::Reserved,
        _ => return None,
    })
}

/// The IPv4 address an IPv6 one stands for, where it stands for one a host
/// or a gateway may deliver to: IPv4-mapped (`::ffff:a.b.c.d`, a dual-stack
/// socket's IPv4), IPv4-translated (`::ffff:0:a.b.c.d`, SIIT),
/// IPv4-compatible (`::a.b.c.d`, deprecated), the well-known NAT64 prefix
/// (`64:ff9b::/96`) and 6to4 (`2002:aabb:ccdd::/48`). The local-use NAT64
/// prefix `64:ff9b:1::/48` may embed the address at any of several
/// offsets, so it is refused whole ([`classify_v6`]).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] => Some(tail),
        [0, 0, 0, 0, 0xffff, 0, ..] => Some(tail),
        // ::/96 less :: and ::1, which are classed as themselves.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddrClass> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let s = ip.segments();
    Some(match s[0] {
        _ if METADATA.contains(&IpAddr::V6(ip)) => AddrClass::Metadata,
        _ if ip.is_unspecified() => AddrClass::Unspecified,
        _ if ip.is_loopback() => AddrClass::Loopback,
        0xfe80..=0xfebf => AddrClass::LinkLocal,
        0xfc00..=0xfdff => AddrClass::UniqueLocal,
        0xff00..=0xffff => AddrClass::Multicast,
        // Site-local (deprecated, fec0::/10): internal by definition.
        0xfec0..=0xfeff => AddrClass::UniqueLocal,
        // The rest of ::/8 (the embedded forms are above): reserved by
        // IETF, and where translators put addresses, local-use NAT64
        // (64:ff9b:1::/48) included.
        0x0000..=0x00ff => AddrClass::Reserved,
        // Discard-only 100::/64.
        0x0100 if s[1..4] == [0, 0, 0] => AddrClass::Reserved,
        // 2001::/23 (Teredo, benchmarking, ORCHID and other protocol
        // assignments, not global unicast) and documentation
        // 2001:db8::/32 and 3fff::/20.
        0x2001 if s[1] < 0x0200 || s[1] == 0xdb8 => AddrClass::Reserved,
        0x3fff if s[1] < 0x1000 => AddrClass::Reserved,
        // SRv6 segment identifiers (5f00::/16).
        0x5f00 => AddrClass::Reserved,
        _ => return None,
    })
}

/// The class of an address the proxy does not dial by default, or `None`
/// for a global unicast one.
pub fn classify(ip: IpAddr) -> Option<AddrClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// The addresses a resolved name may be dialled at.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddrPolicy {
    /// Networks the user allowed although they are internal.
    allow: Vec<IpNet>,
    /// The host's own global addresses (`upstream.host_addresses`).
    this_machine: Vec<IpAddr>,
}

impl AddrPolicy {
    pub(crate) fn new(allow: &[IpNet], this_machine: &[IpAddr]) -> Self {
        Self {
            allow: allow.iter().map(IpNet::trunc).collect(),
            this_machine: this_machine.to_vec(),
        }
    }

    /// Whether the user allowed `ip` although it is internal (for a class
    /// found otherwise than by [`classify`], such as [`AddrClass::ThisMachine`]).
    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip))
    }

    /// `Ok` when `ip` may be dialled, else its class.
    ///
    /// An allowed network lets in what it holds, with one exception: the
    /// metadata addresses need a network of their own size
    /// (`169.254.169.254/32`), so that allowing `169.254.0.0/16` for some
    /// link-local service, or `fc00::/7`, does not also hand out the
    /// machine's cloud credentials.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), AddrClass> {
        // The same address as the IPv4 it stands for, so `10.0.0.0/8`
        // allows `::ffff:10.1.2.3` too.
        let v4 = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let host_own = |a: &IpAddr| *a == ip || Some(*a) == v4;
        let class = match classify(ip) {
            Some(class) => class,
            None if self.this_machine.iter().any(host_own) => AddrClass::ThisMachine,
            None => return Ok(()),
        };
        let allowed = self.allow.iter().any(|net| {
            let holds = |a: IpAddr| {
                if class == AddrClass::Metadata {
                    net.prefix_len() == net.max_prefix_len() && net.addr() == a
                } else {
                    net.contains(&a)
                }
            };
            holds(ip) || v4.is_some_and(holds)
        });
        if allowed {
            Ok(())
        } else {
            Err(class)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<AddrClass> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn internal_addresses_are_classed() {
        use AddrClass::*;
        for (a, c) in [
            ("127.0.0.1", Loopback),
            ("127.255.1.2", Loopback),
            ("::1", Loopback),
            ("169.254.169.254", Metadata),
            ("fd00:ec2::254", Metadata),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.100.100.201", SharedAddressSpace),
            // Other clouds' credential services, Azure's in a public range.
            ("100.100.100.200", Metadata),
            ("169.254.170.2", Metadata),
            ("169.254.170.23", Metadata),
            ("169.254.0.23", Metadata),
            ("168.63.129.16", Metadata),
            ("fd00:ec2::23", Metadata),
            ("fd20:ce::254", Metadata),
            ("169.254.169.252", Metadata),
            ("169.254.42.42", Metadata),
            ("fd00:c1::a9fe:a9fe", Metadata),
            ("fd00:42::42", Metadata),
            ("100.127.255.255", SharedAddressSpace),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fec0::1", UniqueLocal),
            ("224.0.0.1", Multicast),
            ("239.1.1.1", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("192.0.0.170", Reserved),
            ("192.0.2.1", Reserved),
            ("198.18.0.1", Reserved),
            ("2001:db8::1", Reserved),
            ("100::1", Reserved),
            // The same, written as IPv6.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:10.1.2.3", Private),
            ("::127.0.0.1", Loopback),
            ("::169.254.169.254", Metadata),
            ("64:ff9b::a9fe:a9fe", Metadata),
            // Local-use NAT64 embeds at other offsets: refused whole.
            ("64:ff9b:1::7f00:1", Reserved),
            ("64:ff9b:1:7f00:0:100:808:808", Reserved),
            ("::ffff:0:7f00:1", Loopback),
            ("::ffff:0:a9fe:a9fe", Metadata),
            ("::2:0:0:1", Reserved),
            ("2001::1", Reserved),
            ("2001:2::1", Reserved),
            ("2001:10::1", Reserved),
            ("2001:1ff::1", Reserved),
            ("3fff::1", Reserved),
            ("5f00::1", Reserved),
            ("2002:7f00:1::", Loopback),
            ("2002:c0a8:101::1", Private),
        ] {
            assert_eq!(class(a), Some(c), "{a}");
        }
    }

    #[test]
    fn global_addresses_are_not() {
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "11.0.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
            "2001:200::1",
            "3fff:1000::1",
            "168.63.129.17",
        ] {
            assert_eq!(class(a), None, "{a}");
        }
    }

    #[test]
    fn allowed_networks_let_in_what_they_hold_but_metadata_needs_naming() {
        let nets: Vec<IpNet> = [
            "10.0.0.0/8",
            "169.254.0.0/16",
            "fc00::/7",
            "100.64.0.0/10",
            "168.63.0.0/16",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let p = AddrPolicy::new(&nets, &[]);
        let ok = |s: &str| p.check(s.parse().unwrap());
        assert_eq!(ok("10.1.2.3"), Ok(()));
        assert_eq!(ok("::ffff:10.1.2.3"), Ok(()));
        assert_eq!(ok("169.254.1.1"), Ok(()));
        assert_eq!(ok("fd12::1"), Ok(()));
        assert_eq!(ok("192.168.1.1"), Err(AddrClass::Private));
        assert_eq!(ok("127.0.0.1"), Err(AddrClass::Loopback));
        assert_eq!(ok("169.254.169.254"), Err(AddrClass::Metadata));
        assert_eq!(ok("fd00:ec2::254"), Err(AddrClass::Metadata));
        // Allowing a Tailscale-style 100.64/10 does not let in Alibaba's
        // metadata, nor the ECS credentials a link-local /16, nor a public
        // range Azure's WireServer.
        assert_eq!(ok("100.101.1.1"), Ok(()));
        assert_eq!(ok("100.100.100.200"), Err(AddrClass::Metadata));
        assert_eq!(ok("169.254.170.2"), Err(AddrClass::Metadata));
        assert_eq!(ok("168.63.129.16"), Err(AddrClass::Metadata));
        assert_eq!(ok("8.8.8.8"), Ok(()));
        let named = AddrPolicy::new(&["169.254.169.254/32".parse().unwrap()], &[]);
        assert_eq!(named.check("169.254.169.254".parse().unwrap()), Ok(()));
        assert_eq!(
            named.check("::ffff:169.254.169.254".parse().unwrap()),
            Ok(())
        );
        // Host bits in a network are ignored, as `ip route` does.
        let loose = AddrPolicy::new(&["10.1.2.3/8".parse().unwrap()], &[]);
        assert_eq!(loose.check("10.200.0.1".parse().unwrap()), Ok(()));
        assert_eq!(
            AddrPolicy::default().check("10.1.2.3".parse().unwrap()),
            Err(AddrClass::Private)
        );
    }

    #[test]
    fn the_hosts_own_global_addresses_are_this_machine_unless_allowed() {
        let host: Vec<IpAddr> = ["198.18.0.1", "8.8.4.4", "2a00:1450::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let p = AddrPolicy::new(&[], &host);
        let ok = |p: &AddrPolicy, s: &str| p.check(s.parse().unwrap());
        assert_eq!(ok(&p, "8.8.4.4"), Err(AddrClass::ThisMachine));
        assert_eq!(ok(&p, "::ffff:8.8.4.4"), Err(AddrClass::ThisMachine));
        assert_eq!(ok(&p, "2a00:1450::1"), Err(AddrClass::ThisMachine));
        assert_eq!(ok(&p, "8.8.8.8"), Ok(()));
        // An internal one keeps its own class.
        assert_eq!(ok(&p, "198.18.0.1"), Err(AddrClass::Reserved));
        let allowed = AddrPolicy::new(&["8.8.4.4/32".parse().unwrap()], &host);
        assert_eq!(ok(&allowed, "8.8.4.4"), Ok(()));
    }
}
