//! Loads the netfilter object (`hoptrace-nf`) and attaches its programs as
//! netfilter BPF links.
//!
//! aya 0.14 has no netfilter program type, so this module does what its loader
//! would: parse the object with aya-obj, write the read-only globals into a
//! frozen `.rodata` array map, point the object's map references at the main
//! object's maps (one ring buffer for every event), link the `.text` helpers,
//! and load each slot as `BPF_PROG_TYPE_NETFILTER`. Links are owned file
//! descriptors: dropping [`NetfilterLinks`] detaches every program.

use std::{
    collections::HashMap,
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
};

use hoptrace_common::{KernelLayout, NF_PRIORITY_SLOTS, NfHook, TraceConfig};

use crate::kernel::{sys, tracing::RelocatedObject};

/// IPv4 protocol family for netfilter hooks.
pub const NFPROTO_IPV4: u8 = 2;
/// IPv6 protocol family for netfilter hooks.
pub const NFPROTO_IPV6: u8 = 10;

/// Maps the netfilter object shares with the main object (at least these;
/// any other map it references is looked up in the main object by name too).
pub const SHARED_MAPS: [&str; 4] = [
    "HOPTRACE_EVENTS",
    "HOPTRACE_COUNTERS",
    "HOPTRACE_NETNS",
    "HOPTRACE_TC_COVERED",
];

/// Errors loading or attaching the netfilter programs.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// The bytes are not a BPF ELF object aya-obj can read, or its
    /// read-only globals could not be patched.
    #[error("cannot parse the netfilter object")]
    Parse(#[from] aya_obj::ParseError),
    /// Pointing the object's map references or `.text` calls at their
    /// targets failed.
    #[error("cannot relocate the netfilter object")]
    Relocate(#[from] aya_obj::relocation::EbpfRelocationError),
    /// The object lacks `hoptrace_nf_slot<N>`: it was not built from this
    /// source.
    #[error("the netfilter object has no program `{0}`")]
    MissingProgram(String),
    /// The object references a map the main object does not have.
    #[error("the netfilter object references map `{0}`, which the main object does not provide")]
    MissingMap(String),
    /// Creating, filling or freezing the `.rodata` array map failed.
    #[error("cannot create the netfilter object's .rodata map")]
    Rodata(#[source] std::io::Error),
    /// `BPF_PROG_LOAD` refused a slot's program. The message carries the
    /// verifier's last finding; `log` has the tail of its log.
    #[error("the kernel rejected netfilter program `{name}`{}", verifier_finding(.log))]
    Load {
        /// Program (ELF symbol) name, `hoptrace_nf_slot<N>`.
        name: String,
        /// The `bpf(2)` error.
        #[source]
        error: std::io::Error,
        /// The last 6000 bytes of the verifier log (several lines; empty
        /// when the kernel gave none).
        log: String,
    },
    /// A placement's slot does not index [`NF_PRIORITY_SLOTS`].
    #[error("slot {0} is out of range (0..{max})", max = NF_PRIORITY_SLOTS.len())]
    BadSlot(u8),
    /// `BPF_LINK_CREATE` refused a placement.
    #[error(
        "cannot attach netfilter program slot {slot} (priority {priority}) to pf {pf} hook {hook}"
    )]
    Attach {
        /// Protocol family: [`NFPROTO_IPV4`] or [`NFPROTO_IPV6`].
        pf: u8,
        /// Hook name ([`NfHook::name`]).
        hook: &'static str,
        /// Index into [`NF_PRIORITY_SLOTS`].
        slot: u8,
        /// Netfilter priority of the slot.
        priority: i32,
        /// The `bpf(2)` error.
        #[source]
        error: std::io::Error,
    },
}

/// ` (verifier: <finding>)` from the last line of a verifier log that is
/// not its `processed N insns` summary; empty without one.
fn verifier_finding(log: &str) -> String {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with("processed "))
        .map(|line| format!(" (verifier: {line})"))
        .unwrap_or_default()
}

/// Where one netfilter program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetfilterPlacement {
    /// [`NFPROTO_IPV4`] or [`NFPROTO_IPV6`].
    pub pf: u8,
    /// The netfilter hook.
    pub hook: NfHook,
    /// Index into [`NF_PRIORITY_SLOTS`]: the program and its priority.
    pub slot: u8,
}

impl NetfilterPlacement {
    /// The netfilter priority of this placement; `None` when `slot` is out
    /// of range.
    pub fn priority(&self) -> Option<i32> {
        NF_PRIORITY_SLOTS.get(self.slot as usize).copied()
    }
}

fn slot_of(priority: i32) -> u8 {
    NF_PRIORITY_SLOTS
        .iter()
        .position(|&p| p == priority)
        .expect("priority listed in NF_PRIORITY_SLOTS") as u8
}

/// Priorities per hook in the default plan: each pair brackets one band
/// (conntrack -200, DNAT -100, filter 0, SNAT 100).
pub const DEFAULT_PRIORITIES: [(NfHook, &[i32]); 5] = [
    (NfHook::PreRouting, &[-201, -199, -101, -99]),
    (NfHook::LocalIn, &[-1, 1]),
    (NfHook::Forward, &[-1, 1]),
    (NfHook::LocalOut, &[-201, -199, -101, -99, -1, 1]),
    (NfHook::PostRouting, &[99, 101]),
];

/// Both families, every hook, the bracketing priorities of [`DEFAULT_PRIORITIES`].
pub fn default_plan() -> Vec<NetfilterPlacement> {
    [NFPROTO_IPV4, NFPROTO_IPV6]
        .into_iter()
        .flat_map(|pf| {
            DEFAULT_PRIORITIES.iter().flat_map(move |(hook, prios)| {
                prios.iter().map(move |&p| NetfilterPlacement {
                    pf,
                    hook: *hook,
                    slot: slot_of(p),
                })
            })
        })
        .collect()
}

/// Netfilter bands that rewrite headers (DNAT at -100, SNAT at 100).
const NAT_PRIORITIES: [i32; 2] = [-100, 100];

/// Which programs of `plan` parse the headers, as
/// [`TraceConfig::nf_parse_slots`]: on each hook the first one, and each one
/// that follows a NAT band. The brackets in between see the headers the
/// previous program parsed and only record the time.
pub fn parse_slots(plan: &[NetfilterPlacement]) -> [u16; 5] {
    let mut mask = [0u16; 5];
    for pf in [NFPROTO_IPV4, NFPROTO_IPV6] {
        for hook in NfHook::ALL {
            let mut prios: Vec<(i32, u8)> = plan
                .iter()
                .filter(|p| p.pf == pf && p.hook == hook)
                .filter_map(|p| Some((p.priority()?, p.slot)))
                .collect();
            prios.sort_unstable();
            let mut prev: Option<i32> = None;
            for (prio, slot) in prios {
                let after_nat = prev
                    .is_some_and(|prev| NAT_PRIORITIES.iter().any(|&nat| prev < nat && nat < prio));
                if prev.is_none() || after_nat {
                    mask[hook as usize] |= 1 << slot;
                }
                prev = Some(prio);
            }
        }
    }
    mask
}

/// The nine loaded netfilter programs (one per priority slot) and the
/// `.rodata` map they read their globals from.
pub struct NetfilterPrograms {
    programs: Vec<OwnedFd>,
    _rodata: Option<OwnedFd>,
}

/// Attached netfilter links; dropping this detaches all of them.
pub struct NetfilterLinks {
    links: Vec<(NetfilterPlacement, i32, OwnedFd)>,
    failed: Vec<NetfilterError>,
}

impl NetfilterLinks {
    /// Number of attached links.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether no link is attached (an empty plan).
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Where each link is attached.
    pub fn placements(&self) -> impl Iterator<Item = &NetfilterPlacement> {
        self.links.iter().map(|(p, _, _)| p)
    }

    /// Links made at another priority than their slot's, because another
    /// BPF netfilter program held it: (placement, the priority taken).
    pub fn moved(&self) -> impl Iterator<Item = (&NetfilterPlacement, i32)> {
        self.links
            .iter()
            .filter(|(p, prio, _)| p.priority() != Some(*prio))
            .map(|(p, prio, _)| (p, *prio))
    }

    /// Placements that could not be linked at all, with why.
    pub fn failed(&self) -> &[NetfilterError] {
        &self.failed
    }
}

/// The kernel's own netfilter priorities (include/uapi/linux/netfilter_ipv4.h,
/// the same for IPv6): a bracket moved to a free priority must not cross one.
pub const KERNEL_PRIORITIES: [i32; 11] = [
    -400, // conntrack defrag
    -300, // raw
    -225, // SELinux first
    -200, // conntrack
    -150, // mangle
    -100, // nat (DNAT)
    0,    // filter
    50,   // security
    100,  // nat (SNAT)
    225,  // SELinux last
    300,  // conntrack helper
];

/// How many other priorities a bracket tries when its own is taken.
const MAX_PRIORITY_TRIES: usize = 24;

/// Priorities to try, in order, for a bracket whose nominal priority
/// `priority` another BPF netfilter program holds: the nearest ones first,
/// alternately below and above, strictly between the kernel priorities
/// around it and between the neighbouring brackets of the same hook
/// (`hook_priorities`), so that it still brackets the same band.
pub fn alternative_priorities(priority: i32, hook_priorities: &[i32]) -> Vec<i32> {
    let bounds = KERNEL_PRIORITIES
        .iter()
        .chain(hook_priorities.iter().filter(|&&p| p != priority));
    let low = bounds
        .clone()
        .copied()
        .filter(|&p| p < priority)
        .max()
        .unwrap_or(i32::MIN + 1);
    let high = bounds
        .copied()
        .filter(|&p| p > priority)
        .min()
        .unwrap_or(i32::MAX - 1);
    let mut out = Vec::new();
    for distance in 1..=MAX_PRIORITY_TRIES as i32 {
        for candidate in [priority - distance, priority + distance] {
            if candidate > low && candidate < high {
                out.push(candidate);
            }
        }
        if out.len() >= MAX_PRIORITY_TRIES {
            break;
        }
    }
    out.truncate(MAX_PRIORITY_TRIES);
    out
}

/// File descriptor of a map of a loaded aya object, whatever its type.
pub fn aya_map_fd(map: &aya::maps::Map) -> BorrowedFd<'_> {
    use aya::maps::Map;
    let data = match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    data.fd().as_fd()
}

/// Loads the netfilter programs, sharing [`SHARED_MAPS`] with the main object
/// `ebpf`. Call it before taking maps out of `ebpf` (`take_map`).
///
/// # Errors
///
/// As [`load_netfilter_programs_with_maps`]; a map taken out of `ebpf`
/// already is [`NetfilterError::MissingMap`].
pub fn load_netfilter_programs(
    nf_object: &[u8],
    ebpf: &aya::Ebpf,
    layout: &KernelLayout,
    config: &TraceConfig,
) -> Result<NetfilterPrograms, NetfilterError> {
    // Every map of the main object, by name: the netfilter object uses a
    // subset of them (the linker keeps what its programs reference).
    let fds: HashMap<&str, BorrowedFd<'_>> = ebpf
        .maps()
        .map(|(name, map)| (name, aya_map_fd(map)))
        .collect();
    load_netfilter_programs_with_maps(nf_object, &fds, layout, config)
}

fn pod_bytes<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: `v` is a live reference, so its `size_of::<T>()` bytes are
    // readable for the returned borrow; `aya::Pod` promises they are all
    // initialised (no implicit padding), so reading them as `u8` is sound.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Like [`load_netfilter_programs`], with the shared maps given by name.
///
/// # Errors
///
/// - [`NetfilterError::Parse`], [`NetfilterError::Relocate`],
///   [`NetfilterError::MissingProgram`]: `nf_object` is not the object this
///   build expects.
/// - [`NetfilterError::MissingMap`]: `map_fds` lacks a map the object uses.
/// - [`NetfilterError::Rodata`]: the `.rodata` map could not be made.
/// - [`NetfilterError::Load`]: the kernel (or its verifier) refused a slot.
pub fn load_netfilter_programs_with_maps(
    nf_object: &[u8],
    map_fds: &HashMap<&str, BorrowedFd<'_>>,
    layout: &KernelLayout,
    config: &TraceConfig,
) -> Result<NetfilterPrograms, NetfilterError> {
    // Our own .rodata: an array of one element holding the section bytes,
    // read-only for programs and frozen against userspace writes.
    let mut rodata = None;
    let obj = RelocatedObject::new(
        nf_object,
        &[
            ("HOPTRACE_LAYOUT", pod_bytes(layout)),
            ("HOPTRACE_CONFIG", pod_bytes(config)),
        ],
        |name, map| {
            if name != ".rodata" {
                return map_fds
                    .get(name)
                    .map(std::os::fd::AsRawFd::as_raw_fd)
                    .ok_or_else(|| NetfilterError::MissingMap(name.to_owned()));
            }
            let data = map.data();
            let fd = sys::map_create(
                sys::BPF_MAP_TYPE_ARRAY,
                4,
                data.len() as u32,
                1,
                sys::BPF_F_RDONLY_PROG,
                "hoptrace_nf.ro",
            )
            .map_err(NetfilterError::Rodata)?;
            sys::map_update(&fd, &0u32.to_ne_bytes(), data).map_err(NetfilterError::Rodata)?;
            sys::map_freeze(&fd).map_err(NetfilterError::Rodata)?;
            let raw = fd.as_raw_fd();
            rodata = Some(fd);
            Ok(raw)
        },
    )?;

    let license = CString::new("GPL").expect("no NUL");
    let mut programs = Vec::with_capacity(NF_PRIORITY_SLOTS.len());
    for slot in 0..NF_PRIORITY_SLOTS.len() {
        let name = format!("hoptrace_nf_slot{slot}");
        let insns = obj
            .instructions(&name)
            .map_err(|_| NetfilterError::MissingProgram(name.clone()))?;
        let fd = sys::prog_load(&sys::ProgLoad {
            prog_type: sys::BPF_PROG_TYPE_NETFILTER,
            expected_attach_type: sys::BPF_NETFILTER,
            attach_btf_id: 0,
            insns: &insns,
            license: &license,
            name: &format!("hoptrace_nf_s{slot}"),
        })
        .map_err(|e| NetfilterError::Load {
            name: name.clone(),
            error: e.error,
            log: e.verifier_log,
        })?;
        programs.push(fd);
    }
    Ok(NetfilterPrograms {
        programs,
        _rodata: rodata,
    })
}

impl NetfilterPrograms {
    /// Attaches the programs at `plan`, in the calling thread's network
    /// namespace. A priority that another BPF netfilter program holds
    /// (`EBUSY`: another hoptrace, or any other tool) is replaced by the
    /// nearest free one that brackets the same band
    /// ([`alternative_priorities`]); every link that can be made is kept,
    /// and those that cannot are listed in [`NetfilterLinks::failed`].
    ///
    /// # Errors
    ///
    /// [`NetfilterError::BadSlot`] for a placement outside
    /// [`NF_PRIORITY_SLOTS`]; the first [`NetfilterError::Attach`] when no
    /// link at all could be made (the kernel has no netfilter links).
    pub fn attach(&self, plan: &[NetfilterPlacement]) -> Result<NetfilterLinks, NetfilterError> {
        let mut links = Vec::with_capacity(plan.len());
        let mut failed = Vec::new();
        for placement in plan {
            let priority = placement
                .priority()
                .ok_or(NetfilterError::BadSlot(placement.slot))?;
            let hook_priorities: Vec<i32> = plan
                .iter()
                .filter(|p| p.pf == placement.pf && p.hook == placement.hook)
                .filter_map(NetfilterPlacement::priority)
                .collect();
            let prog = &self.programs[placement.slot as usize];
            let link = |priority: i32| {
                sys::netfilter_link_create(
                    prog,
                    placement.pf.into(),
                    placement.hook as u32,
                    priority,
                )
            };
            let mut result = link(priority).map(|fd| (priority, fd));
            if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EBUSY)) {
                for other in alternative_priorities(priority, &hook_priorities) {
                    match link(other) {
                        Ok(fd) => {
                            result = Ok((other, fd));
                            break;
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
            }
            match result {
                Ok((taken, fd)) => links.push((*placement, taken, fd)),
                Err(error) => failed.push(NetfilterError::Attach {
                    pf: placement.pf,
                    hook: placement.hook.name(),
                    slot: placement.slot,
                    priority,
                    error,
                }),
            }
        }
        if links.is_empty() && !failed.is_empty() {
            return Err(failed.swap_remove(0));
        }
        Ok(NetfilterLinks { links, failed })
    }

    /// Kernel program ids of the nine slots (as `bpftool prog` shows them).
    ///
    /// # Errors
    ///
    /// The `BPF_OBJ_GET_INFO_BY_FD` error of the first slot that fails.
    pub fn program_ids(&self) -> std::io::Result<Vec<u32>> {
        self.programs
            .iter()
            .map(|fd| sys::object_id(fd.as_fd()))
            .collect()
    }

    /// Program file descriptor of a slot.
    pub fn program_fd(&self, slot: u8) -> Option<BorrowedFd<'_>> {
        self.programs.get(slot as usize).map(|fd| fd.as_fd())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn parse_slots_first_of_each_hook_and_after_nat() {
        let mask = parse_slots(&default_plan());
        let parsing = |hook: NfHook| -> Vec<i32> {
            (0..NF_PRIORITY_SLOTS.len())
                .filter(|slot| mask[hook as usize] >> slot & 1 != 0)
                .map(|slot| NF_PRIORITY_SLOTS[slot])
                .collect()
        };
        assert_eq!(parsing(NfHook::PreRouting), [-201, -99]);
        assert_eq!(parsing(NfHook::LocalIn), [-1]);
        assert_eq!(parsing(NfHook::Forward), [-1]);
        assert_eq!(parsing(NfHook::LocalOut), [-201, -99]);
        assert_eq!(parsing(NfHook::PostRouting), [99, 101]);
        assert_eq!(parse_slots(&[]), [0; 5]);
    }

    use super::*;

    #[test]
    fn default_plan_brackets_each_band_in_both_families() {
        let plan = default_plan();
        assert_eq!(plan.len(), 2 * (4 + 2 + 2 + 6 + 2));
        for pf in [NFPROTO_IPV4, NFPROTO_IPV6] {
            let prios = |hook: NfHook| -> Vec<i32> {
                plan.iter()
                    .filter(|p| p.pf == pf && p.hook == hook)
                    .map(|p| p.priority().expect("valid slot"))
                    .collect()
            };
            assert_eq!(prios(NfHook::PreRouting), [-201, -199, -101, -99]);
            assert_eq!(prios(NfHook::LocalIn), [-1, 1]);
            assert_eq!(prios(NfHook::Forward), [-1, 1]);
            assert_eq!(prios(NfHook::LocalOut), [-201, -199, -101, -99, -1, 1]);
            assert_eq!(prios(NfHook::PostRouting), [99, 101]);
        }
        // Slots index NF_PRIORITY_SLOTS.
        let p = plan
            .iter()
            .find(|p| p.hook == NfHook::PostRouting)
            .expect("postrouting");
        assert_eq!(NF_PRIORITY_SLOTS[p.slot as usize], 99);
    }

    #[test]
    fn a_busy_priority_moves_within_its_band() {
        // -201 brackets conntrack (-200) from below: it may move down to
        // -224 (SELinux first sits at -225), never up past -200.
        let hook = [-201, -199, -101, -99];
        let alt = alternative_priorities(-201, &hook);
        assert_eq!(&alt[..3], &[-202, -203, -204]);
        assert!(alt.iter().all(|&p| p > -225 && p < -200), "{alt:?}");
        // -99 and -1 share the band between DNAT (-100) and filter (0):
        // they must not cross each other.
        let out = [-201, -199, -101, -99, -1, 1];
        let alt = alternative_priorities(-99, &out);
        assert_eq!(&alt[..3], &[-98, -97, -96]);
        let alt = alternative_priorities(-1, &out);
        assert_eq!(&alt[..3], &[-2, -3, -4]);
        assert!(alt.iter().all(|&p| p > -99 && p < 0), "{alt:?}");
        // 99 and 101 bracket SNAT (100): each stays on its side.
        let post = [99, 101];
        assert!(
            alternative_priorities(99, &post)
                .iter()
                .all(|&p| p > 50 && p < 100)
        );
        assert!(
            alternative_priorities(101, &post)
                .iter()
                .all(|&p| p > 100 && p < 225)
        );
        assert!(alternative_priorities(101, &post).len() <= MAX_PRIORITY_TRIES);
    }

    #[test]
    fn out_of_range_slot_has_no_priority() {
        let p = NetfilterPlacement {
            pf: NFPROTO_IPV4,
            hook: NfHook::LocalIn,
            slot: NF_PRIORITY_SLOTS.len() as u8,
        };
        assert_eq!(p.priority(), None);
    }

    #[test]
    fn load_error_is_one_line_with_the_verifier_finding() {
        let err = NetfilterError::Load {
            name: "hoptrace_nf_slot3".into(),
            error: std::io::Error::from_raw_os_error(libc::EACCES),
            log: "0: (b7) r0 = 1\nR1 invalid mem access 'scalar'\n\
                  processed 2 insns (limit 1000000) max_states_per_insn 0\n"
                .into(),
        };
        assert_eq!(
            err.to_string(),
            "the kernel rejected netfilter program `hoptrace_nf_slot3` \
             (verifier: R1 invalid mem access 'scalar')"
        );
        let no_log = NetfilterError::Load {
            name: "hoptrace_nf_slot0".into(),
            error: std::io::Error::from_raw_os_error(libc::EPERM),
            log: String::new(),
        };
        assert_eq!(
            no_log.to_string(),
            "the kernel rejected netfilter program `hoptrace_nf_slot0`"
        );
    }

    #[test]
    fn garbage_object_is_a_parse_error() {
        let err = load_netfilter_programs_with_maps(
            b"not an elf",
            &HashMap::new(),
            &KernelLayout::default(),
            &TraceConfig::default(),
        )
        .err()
        .expect("error");
        assert!(matches!(err, NetfilterError::Parse(_)), "{err}");
    }
}
