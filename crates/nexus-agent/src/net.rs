//! Minimal IPv4 setup from userspace (the guest kernel has no `CONFIG_IP_PNP`): loopback up, the
//! address and netmask of the first non-loopback interface, and a default route, all with the
//! classic `SIOCSIF*`/`SIOCADDRT` ioctls so no extra tooling is needed in the image.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::cmdline::BootConfig;

/// Kernel `struct rtentry` (not exported by libc for glibc targets).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_tos: libc::c_uchar,
    rt_class: libc::c_uchar,
    rt_pad4: [libc::c_short; 3],
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Brings loopback up and applies `nexus.ip`/`nexus.gw` when given.
pub fn configure(cfg: &BootConfig) -> io::Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    set_up(&sock, "lo")?;
    let Some((addr, prefix)) = cfg.ip else {
        return Ok(());
    };
    let ifname = first_ethernet().ok_or_else(|| io::Error::other("no network interface found"))?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    if let Some(mtu) = cfg.mtu {
        let mut req = ifreq(&ifname)?;
        req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        ioctl(&sock, libc::SIOCSIFMTU, &mut req)?;
    }
    set_addr(&sock, &ifname, libc::SIOCSIFADDR, addr)?;
    set_addr(&sock, &ifname, libc::SIOCSIFNETMASK, Ipv4Addr::from(mask))?;
    set_up(&sock, &ifname)?;
    if let Some(gw) = cfg.gateway {
        add_default_route(&sock, gw)?;
    }
    if !cfg.dns.is_empty() {
        write_resolv_conf(Path::new("/etc/resolv.conf"), &cfg.dns)?;
    }
    Ok(())
}

/// Points the guest's resolver at `servers` (nexusd's resolver on the gateway). A symlink in
/// the image (say to systemd-resolved's file) is replaced by a plain file.
fn write_resolv_conf(path: &Path, servers: &[Ipv4Addr]) -> io::Result<()> {
    let mut text = String::from("# written by nexus-agent at boot: nexusd's resolver\n");
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    let tmp = path.with_extension("nexus-tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

fn first_ethernet() -> Option<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("interface name {name} too long")));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and both are plain old data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(sock: &OwnedFd, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the argument struct the kernel expects for `request`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_addr(
    sock: &OwnedFd,
    ifname: &str,
    request: libc::c_ulong,
    addr: Ipv4Addr,
) -> io::Result<()> {
    let mut req = ifreq(ifname)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(sock, request, &mut req)
}

fn set_up(sock: &OwnedFd, ifname: &str) -> io::Result<()> {
    let mut req = ifreq(ifname)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req)
}

fn add_default_route(sock: &OwnedFd, gateway: Ipv4Addr) -> io::Result<()> {
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY),
        rt_pad2: 0,
        rt_pad3: 0,
        rt_tos: 0,
        rt_class: 0,
        rt_pad4: [0; 3],
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(sock, libc::SIOCADDRT, &mut route)
}
