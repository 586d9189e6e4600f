//! One ARP request from the proxy's own address on each client network,
//! sent once it listens.
//!
//! Why: an agent's container may start before its proxy's (the Docker
//! backend starts both at once, the agent held in its launch gate), and it
//! asks for the proxy's address as soon as Docker's DNS knows it, a moment
//! before the proxy's interface answers ARP. The agent's kernel repeats an
//! unanswered ARP request only after a second, and holds every packet to
//! the proxy until then: seen as the proxy's entry `INCOMPLETE` in the
//! agent's `/proc/net/arp` for that second in most launches. Any ARP packet
//! from the proxy's address completes that entry at once, and a datagram
//! to an address of the network that nobody holds makes the proxy's kernel
//! broadcast exactly one: an ARP request from the proxy's address. The
//! datagram itself never leaves (nobody answers for that address).

use std::net::{Ipv4Addr, UdpSocket};

use ipnet::IpNet;

/// Sends the datagram on each IPv4 client network. Best effort: a failure
/// only means the agent's first connection may wait for its own retry.
pub(crate) fn announce(clients: &[IpNet]) {
    for net in clients {
        let IpNet::V4(net) = net else { continue };
        let Some(target) = unheld_address(net) else {
            continue;
        };
        let sent = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.send_to(&[], (target, DISCARD_PORT)));
        if let Err(e) = sent {
            tracing::debug!("announcing the proxy on {net}: {e}");
        }
    }
}

/// The discard service's port: should the address answer after all, the
/// datagram asks nothing of it.
const DISCARD_PORT: u16 = 9;

/// The network's last host address: Docker hands out addresses from the
/// bottom (gateway first), so on a bottle's network nobody holds it.
fn unheld_address(net: &ipnet::Ipv4Net) -> Option<Ipv4Addr> {
    if net.prefix_len() > 30 {
        return None;
    }
    Some(Ipv4Addr::from(u32::from(net.broadcast()) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_host_address_is_used_and_tiny_networks_are_skipped() {
        let net: ipnet::Ipv4Net = "172.25.0.0/16".parse().unwrap();
        assert_eq!(unheld_address(&net), Some(Ipv4Addr::new(172, 25, 255, 254)));
        let net: ipnet::Ipv4Net = "10.0.0.0/30".parse().unwrap();
        assert_eq!(unheld_address(&net), Some(Ipv4Addr::new(10, 0, 0, 2)));
        let net: ipnet::Ipv4Net = "10.0.0.0/31".parse().unwrap();
        assert_eq!(unheld_address(&net), None);
    }
}
