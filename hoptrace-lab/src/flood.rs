//! A bounded flood of distinct UDP flows, for memory measurements: each
//! packet has its own source address and port, so every one is a new flow
//! (a new journey and, where conntrack runs, a new conntrack entry) for the
//! node it crosses. Sent from a raw socket inside a pod's network namespace
//! to an address the caller chooses inside the lab; nothing leaves the
//! lab's namespaces.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::netns::{NetnsError, with_netns};

/// UDP destination port of the flood's packets (8080, where the lab's
/// HTTP backends listen over TCP, so no UDP socket answers them).
pub const FLOOD_PORT: u16 = 8080;

/// First two octets of the flood's source addresses: 10.200.0.0/16,
/// outside every lab subnet.
const SOURCE_NET: [u8; 2] = [10, 200];

/// Errors of a flood.
#[derive(Debug, thiserror::Error)]
pub enum FloodError {
    /// The pod's namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)` failed.
    #[error("raw socket in {netns}: {source}")]
    Socket {
        netns: String,
        #[source]
        source: std::io::Error,
    },
}

/// The Internet checksum (RFC 1071) of `header` (an odd last byte is
/// padded with zero).
pub fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 + UDP packet of flow `i` (44 bytes: 20 of IPv4 header, 8 of
/// UDP, 16 of zero payload; the UDP checksum is 0, "none", RFC 768).
/// Flow `i` has source 10.200.(i>>8 & 63).(i & 255) and source port
/// 1024 + (i >> 14): distinct for every `i` below 2^20.
pub fn flow_packet(i: u32, dst: Ipv4Addr) -> [u8; 44] {
    let mut packet = [0u8; 44];
    let len = packet.len() as u16;
    let src = [SOURCE_NET[0], SOURCE_NET[1], (i >> 8) as u8 & 0x3f, i as u8];
    let sport = 1024 + (i >> 14) as u16;
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&len.to_be_bytes());
    packet[4..6].copy_from_slice(&(i as u16).to_be_bytes());
    packet[6] = 0x40; // DF
    packet[8] = 64; // TTL
    packet[9] = 17; // UDP
    packet[12..16].copy_from_slice(&src);
    packet[16..20].copy_from_slice(&dst.octets());
    let csum = checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&csum.to_be_bytes());
    packet[20..22].copy_from_slice(&sport.to_be_bytes());
    packet[22..24].copy_from_slice(&FLOOD_PORT.to_be_bytes());
    packet[24..26].copy_from_slice(&(len - 20).to_be_bytes());
    packet
}

/// Sends `flows` UDP packets, one per flow ([`flow_packet`]), paced evenly
/// over `over`, from a raw socket in namespace `pod` to `dst`. Returns how
/// many the socket accepted.
///
/// # Errors
/// [`FloodError`] when the namespace or the raw socket cannot be had
/// (nothing is sent then).
pub fn udp_flows(pod: &str, dst: Ipv4Addr, flows: u32, over: Duration) -> Result<u32, FloodError> {
    with_netns(pod, || {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if raw < 0 {
            return Err(FloodError::Socket {
                netns: pod.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        let started = Instant::now();
        let mut sent = 0u32;
        for i in 0..flows {
            // Pace: packet i goes out at i/flows of the flood.
            let due = over.mul_f64(f64::from(i) / f64::from(flows));
            if let Some(wait) = due.checked_sub(started.elapsed())
                && wait > Duration::from_millis(1)
            {
                std::thread::sleep(wait);
            }
            let packet = flow_packet(i, dst);
            // SAFETY: `packet` and `to` are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const to).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if n > 0 {
                sent += 1;
            }
        }
        Ok(sent)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_packets_are_valid_ipv4_udp_and_distinct() {
        let dst = Ipv4Addr::new(10, 244, 0, 3);
        let a = flow_packet(0, dst);
        let b = flow_packet(70_000, dst);
        // A header with its checksum sums to 0xffff: checksum() gives 0.
        assert_eq!(checksum(&a[..20]), 0);
        assert_eq!(checksum(&b[..20]), 0);
        assert_eq!(u16::from_be_bytes([a[2], a[3]]), 44);
        assert_eq!(u16::from_be_bytes([a[24], a[25]]), 24);
        assert_eq!(&a[16..20], &dst.octets());
        let flow = |p: &[u8; 44]| (p[12..16].to_vec(), u16::from_be_bytes([p[20], p[21]]));
        assert_ne!(flow(&a), flow(&b));
        let flows: std::collections::HashSet<_> = (0..50_000)
            .map(|i| flow(&flow_packet(i * 7, dst)))
            .collect();
        assert_eq!(flows.len(), 50_000);
    }
}
