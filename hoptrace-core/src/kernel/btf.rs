//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! rustc emits no CO-RE relocations, so the kernel programs read struct fields
//! at offsets that userspace looks up here and writes into [`KernelLayout`]
//! at load time. Also gives the names of `enum skb_drop_reason` and the ids
//! of BTF functions (kfuncs).
//!
//! Why not the `btf-rs` crate: version 2.0.0 builds on rustc 1.95 and has
//! every lookup used here (members with bit offsets, anonymous members, enum
//! and enum64 values, types by name), but it is LGPL-2.1-or-later, which does
//! not fit a statically linked MIT OR Apache-2.0 binary; this reader is
//! short and covered by the tests below.

use std::{collections::HashMap, path::Path};

use hoptrace_common::KernelLayout;

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Errors reading BTF or finding what hoptrace needs in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file cannot be read.
    #[error("cannot read kernel BTF at {path}: {source} (is CONFIG_DEBUG_INFO_BTF enabled?)")]
    Read {
        /// The file.
        path: String,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The blob is not valid BTF: says what is wrong and where.
    #[error("malformed BTF: {0}")]
    Malformed(String),
    /// No struct, union or enum of that name (with members).
    #[error("BTF has no struct/union/enum named `{0}`")]
    MissingType(String),
    /// The struct has no member at that path.
    #[error("BTF struct `{ty}` has no member `{member}`")]
    MissingMember {
        /// The outer struct.
        ty: String,
        /// The member path, dot-separated, as far as it was walked.
        member: String,
    },
    /// The member path ends inside a bitfield, not on a byte.
    #[error("BTF member `{ty}.{member}` is a bitfield at bit {bit_offset}, not a byte offset")]
    NotByteAligned {
        /// The outer struct.
        ty: String,
        /// The member path, dot-separated.
        member: String,
        /// Offset from the start of `ty`, in bits.
        bit_offset: u32,
    },
    /// No function (`BTF_KIND_FUNC`) of that name.
    #[error("BTF has no function named `{0}`")]
    MissingFunc(String),
}

/// A member of a struct or union.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset from the start of the enclosing struct.
    bit_offset: u32,
}

/// The fixed part of one BTF type (`struct btf_type`, include/uapi/linux/btf.h)
/// and where its kind-specific trailer starts.
#[derive(Clone, Copy, Debug)]
struct TypeHeader {
    name_off: u32,
    kind: u32,
    /// Number of trailing members, values or parameters.
    vlen: usize,
    kind_flag: bool,
    /// `size` for structs, unions, enums and ints; `type` for typedefs,
    /// qualifiers, pointers and functions.
    size_or_type: u32,
    /// Byte offset of the trailer in the blob.
    trailer: usize,
}

/// Parsed BTF, kept as the raw blob plus the byte offset of every type:
/// about 4 bytes per type beyond the blob itself (the kernel's is ~5.5 MB
/// with ~150,000 types), decoded on demand. A decoded type table would take
/// two to three times the blob, and hoptrace reads a few dozen types.
pub struct Btf {
    data: Vec<u8>,
    little_endian: bool,
    /// The string section's byte range in `data`.
    strings: std::ops::Range<usize>,
    /// Byte offset in `data` of each type's header; index = type id (id 0,
    /// `void`, has none and holds `u32::MAX`).
    offsets: Vec<u32>,
}

/// Bytes of the kind-specific data after a type's 12-byte header.
fn trailer_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_FLOAT | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST
        | KIND_RESTRICT | KIND_TYPE_TAG | KIND_FUNC => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_ENUM64 | KIND_DATASEC => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        other => return Err(BtfError::Malformed(format!("unknown BTF kind {other}"))),
    })
}

impl Btf {
    /// Reads and parses the BTF file at `path`.
    ///
    /// # Errors
    ///
    /// [`BtfError::Read`] when the file cannot be read, [`BtfError::Malformed`]
    /// when it is not BTF.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_blob(data)
    }

    /// The running kernel's BTF.
    ///
    /// # Errors
    ///
    /// As [`Btf::from_file`] on [`VMLINUX_BTF`].
    pub fn vmlinux() -> Result<Self, BtfError> {
        Self::from_file(VMLINUX_BTF)
    }

    /// Parses a raw BTF blob (header, type section, string section).
    ///
    /// # Errors
    ///
    /// [`BtfError::Malformed`]: bad magic, sections out of bounds, a
    /// truncated type, an unknown kind.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        Self::from_blob(data.to_vec())
    }

    /// As [`Btf::parse`], keeping `data` instead of copying it.
    fn from_blob(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < 24 {
            return Err(BtfError::Malformed("shorter than the BTF header".into()));
        }
        let little_endian = match (
            u16::from_le_bytes([data[0], data[1]]),
            u16::from_be_bytes([data[0], data[1]]),
        ) {
            (BTF_MAGIC, _) => true,
            (_, BTF_MAGIC) => false,
            _ => return Err(BtfError::Malformed("bad magic".into())),
        };
        let mut btf = Self {
            data,
            little_endian,
            strings: 0..0,
            offsets: vec![u32::MAX], // id 0 is void
        };
        let word = |btf: &Self, pos: usize| btf.word(pos);
        let hdr_len = word(&btf, 4)? as usize;
        let (type_off, type_len) = (word(&btf, 8)? as usize, word(&btf, 12)? as usize);
        let (str_off, str_len) = (word(&btf, 16)? as usize, word(&btf, 20)? as usize);
        let section = |off: usize, len: usize, what: &str| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .filter(|range| range.end <= btf.data.len())
                .ok_or_else(|| BtfError::Malformed(format!("{what} section out of bounds")))
        };
        let types = section(type_off, type_len, "type")?;
        btf.strings = section(str_off, str_len, "string")?;
        let mut pos = types.start;
        while pos < types.end {
            let info = btf.word(pos + 4)?;
            let trailer = trailer_len((info >> 24) & 0x1f, (info & 0xffff) as usize)?;
            let offset = u32::try_from(pos)
                .map_err(|_| BtfError::Malformed("type section beyond 4 GiB".into()))?;
            btf.offsets.push(offset);
            pos += 12 + trailer;
            if pos > types.end {
                return Err(BtfError::Malformed("type section truncated".into()));
            }
        }
        Ok(btf)
    }

    /// The 32-bit word at byte `pos` of the blob, in the blob's byte order.
    fn word(&self, pos: usize) -> Result<u32, BtfError> {
        let bytes: [u8; 4] = self
            .data
            .get(pos..pos + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {pos}")))?;
        Ok(if self.little_endian {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        })
    }

    /// A word inside a type that [`Btf::from_blob`] checked lies in the blob.
    fn checked_word(&self, pos: usize) -> u32 {
        self.word(pos).unwrap_or(0)
    }

    /// Number of types, including the implicit `void` (id 0).
    pub fn type_count(&self) -> usize {
        self.offsets.len()
    }

    fn name(&self, off: u32) -> &str {
        let Some(rest) = self.data[self.strings.clone()].get(off as usize..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn header(&self, id: u32) -> Option<TypeHeader> {
        let pos = *self.offsets.get(id as usize).filter(|&&p| p != u32::MAX)? as usize;
        let info = self.checked_word(pos + 4);
        Some(TypeHeader {
            name_off: self.checked_word(pos),
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: self.checked_word(pos + 8),
            trailer: pos + 12,
        })
    }

    /// Every type id with its header, in id order.
    fn headers(&self) -> impl Iterator<Item = (u32, TypeHeader)> + '_ {
        (1..self.offsets.len() as u32).filter_map(|id| Some((id, self.header(id)?)))
    }

    /// Members of a struct or union (empty for any other kind).
    fn members(&self, h: TypeHeader) -> impl Iterator<Item = Member> + '_ {
        let n = if matches!(h.kind, KIND_STRUCT | KIND_UNION) {
            h.vlen
        } else {
            0
        };
        (0..n).map(move |i| {
            let at = h.trailer + 12 * i;
            let offset = self.checked_word(at + 8);
            Member {
                name_off: self.checked_word(at),
                type_id: self.checked_word(at + 4),
                // With kind_flag the top 8 bits hold the bitfield size.
                bit_offset: if h.kind_flag {
                    offset & 0x00ff_ffff
                } else {
                    offset
                },
            }
        })
    }

    /// (name offset, value) of each enumerator of an enum or enum64.
    fn enumerators(&self, h: TypeHeader) -> impl Iterator<Item = (u32, i64)> + '_ {
        let n = if matches!(h.kind, KIND_ENUM | KIND_ENUM64) {
            h.vlen
        } else {
            0
        };
        (0..n).map(move |i| {
            if h.kind == KIND_ENUM64 {
                let at = h.trailer + 12 * i;
                let (lo, hi) = (self.checked_word(at + 4), self.checked_word(at + 8));
                (
                    self.checked_word(at),
                    ((u64::from(hi) << 32) | u64::from(lo)) as i64,
                )
            } else {
                let at = h.trailer + 8 * i;
                let raw = self.checked_word(at + 4);
                let value = if h.kind_flag {
                    i64::from(raw as i32)
                } else {
                    i64::from(raw)
                };
                (self.checked_word(at), value)
            }
        })
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.header(id) {
                Some(h)
                    if matches!(
                        h.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = h.size_or_type;
                }
                _ => break,
            }
        }
        id
    }

    /// Id of the first type of one of `kinds` named `name` that satisfies `also`.
    fn id_by_name(
        &self,
        kinds: &[u32],
        name: &str,
        also: impl Fn(TypeHeader) -> bool,
    ) -> Option<u32> {
        self.headers()
            .find(|(_, h)| kinds.contains(&h.kind) && also(*h) && self.name(h.name_off) == name)
            .map(|(id, _)| id)
    }

    /// Id of the struct or union named `name` that has members (a definition,
    /// not a forward declaration).
    fn composite_by_name(&self, name: &str) -> Result<u32, BtfError> {
        self.id_by_name(&[KIND_STRUCT, KIND_UNION], name, |h| h.vlen > 0)
            .ok_or_else(|| BtfError::MissingType(name.to_owned()))
    }

    /// Finds `member` in composite `id`, descending into anonymous structs and
    /// unions; returns (bit offset from the start of `id`, member type id).
    fn find_member(&self, id: u32, member: &str) -> Option<(u32, u32)> {
        let h = self.header(self.resolve(id))?;
        // Named members first, so a direct hit wins over a nested one.
        if let Some(m) = self
            .members(h)
            .find(|m| m.name_off != 0 && self.name(m.name_off) == member)
        {
            return Some((m.bit_offset, m.type_id));
        }
        self.members(h)
            .filter(|m| self.name(m.name_off).is_empty())
            .find_map(|m| {
                let (inner, ty) = self.find_member(m.type_id, member)?;
                Some((m.bit_offset + inner, ty))
            })
    }

    /// Byte offset of a member path inside struct `ty`: `["ns", "inum"]` is
    /// `offsetof(ty, ns) + offsetof(typeof(ns), inum)`. Anonymous structs and
    /// unions along the way are searched and their offsets added.
    ///
    /// # Errors
    ///
    /// No such struct, no such member, or the path ends inside a bitfield
    /// ([`BtfError::NotByteAligned`]).
    pub fn member_offset(&self, ty: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut id = self.composite_by_name(ty)?;
        let mut bits = 0u32;
        let mut walked = String::new();
        for (i, member) in path.iter().enumerate() {
            if i > 0 {
                walked.push('.');
            }
            walked.push_str(member);
            let (offset, member_ty) =
                self.find_member(id, member)
                    .ok_or_else(|| BtfError::MissingMember {
                        ty: ty.to_owned(),
                        member: walked.clone(),
                    })?;
            bits += offset;
            id = member_ty;
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::NotByteAligned {
                ty: ty.to_owned(),
                member: walked,
                bit_offset: bits,
            });
        }
        Ok(bits / 8)
    }

    /// The offsets the kernel programs need, with `valid == 1`.
    ///
    /// # Errors
    ///
    /// As [`Btf::member_offset`], for the first offset not found.
    pub fn kernel_layout(&self) -> Result<KernelLayout, BtfError> {
        Ok(KernelLayout {
            skb_head: self.member_offset("sk_buff", &["head"])?,
            skb_len: self.member_offset("sk_buff", &["len"])?,
            skb_network_header: self.member_offset("sk_buff", &["network_header"])?,
            skb_tail: self.member_offset("sk_buff", &["tail"])?,
            skb_protocol: self.member_offset("sk_buff", &["protocol"])?,
            skb_dev: self.member_offset("sk_buff", &["dev"])?,
            skb_nfct: self.member_offset("sk_buff", &["_nfct"])?,
            dev_ifindex: self.member_offset("net_device", &["ifindex"])?,
            dev_nd_net: self.member_offset("net_device", &["nd_net", "net"])?,
            net_ns_inum: self.member_offset("net", &["ns", "inum"])?,
            skb_sk: self.member_offset("sk_buff", &["sk"])?,
            sk_net: self.member_offset("sock", &["__sk_common", "skc_net", "net"])?,
            nf_state_hook: self.member_offset("nf_hook_state", &["hook"])?,
            nf_state_pf: self.member_offset("nf_hook_state", &["pf"])?,
            nf_state_net: self.member_offset("nf_hook_state", &["net"])?,
            valid: 1,
            // Optional: 0 tells the programs that the entry's status is unknown.
            nf_conn_status: self.member_offset("nf_conn", &["status"]).unwrap_or(0),
            _pad: 0,
        })
    }

    /// Values and names of an enum, as written in the source.
    ///
    /// # Errors
    ///
    /// [`BtfError::MissingType`] when there is no enum of that name.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let id = self
            .id_by_name(&[KIND_ENUM, KIND_ENUM64], name, |_| true)
            .ok_or_else(|| BtfError::MissingType(format!("enum {name}")))?;
        let h = self.header(id).expect("an id from id_by_name");
        Ok(self
            .enumerators(h)
            .map(|(n, v)| (self.name(n).to_owned(), v))
            .collect())
    }

    /// `enum skb_drop_reason` as value → short name (`SKB_DROP_REASON_NO_SOCKET`
    /// becomes `no_socket`).
    ///
    /// # Errors
    ///
    /// [`BtfError::MissingType`] when the kernel has no such enum.
    pub fn drop_reason_names(&self) -> Result<HashMap<u32, String>, BtfError> {
        Ok(self
            .enum_values("skb_drop_reason")?
            .into_iter()
            .filter_map(|(name, value)| {
                let short = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(&name);
                Some((u32::try_from(value).ok()?, short.to_ascii_lowercase()))
            })
            .collect())
    }

    /// BTF type id of the function (`BTF_KIND_FUNC`) called `name`.
    ///
    /// # Errors
    ///
    /// [`BtfError::MissingFunc`] when there is none.
    pub fn func_id(&self, name: &str) -> Result<u32, BtfError> {
        self.id_by_name(&[KIND_FUNC], name, |_| true)
            .ok_or_else(|| BtfError::MissingFunc(name.to_owned()))
    }

    /// BTF type id of the typedef `btf_trace_<tracepoint>` that a tp_btf
    /// program names as its `attach_btf_id` (the kernel declares one per
    /// tracepoint, include/trace/bpf_probe.h).
    ///
    /// # Errors
    ///
    /// [`BtfError::MissingType`] when the kernel has no such tracepoint.
    pub fn tracepoint_id(&self, tracepoint: &str) -> Result<u32, BtfError> {
        let name = format!("btf_trace_{tracepoint}");
        self.id_by_name(&[KIND_TYPEDEF], &name, |_| true)
            .ok_or(BtfError::MissingType(name))
    }
}

/// The running kernel's layout, from [`VMLINUX_BTF`].
///
/// # Errors
///
/// As [`Btf::vmlinux`] and [`Btf::kernel_layout`].
pub fn kernel_layout() -> Result<KernelLayout, BtfError> {
    Btf::vmlinux()?.kernel_layout()
}

/// The running kernel's drop reasons, from [`VMLINUX_BTF`].
///
/// # Errors
///
/// As [`Btf::vmlinux`] and [`Btf::drop_reason_names`].
pub fn drop_reason_names() -> Result<HashMap<u32, String>, BtfError> {
    Btf::vmlinux()?.drop_reason_names()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds little-endian BTF blobs for tests.
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        fn header(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
        ) -> u32 {
            let name = self.str(name);
            let info = (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 };
            self.words(&[name, info, size_or_type]);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.header(name, KIND_INT, false, 0, bytes);
            self.words(&[bytes * 8]);
            id
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.header("", KIND_PTR, false, 0, to)
        }

        fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.header(name, KIND_TYPEDEF, false, 0, to)
        }

        /// Members as (name, type, bit offset, bitfield size).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kind_flag = members.iter().any(|m| m.3 != 0);
            let id = self.header(name, kind, kind_flag, members.len() as u32, size);
            for &(mname, ty, bits, bitfield) in members {
                let mname = self.str(mname);
                let offset = if kind_flag {
                    (bitfield << 24) | bits
                } else {
                    bits
                };
                self.words(&[mname, ty, offset]);
            }
            id
        }

        fn enumeration(&mut self, name: &str, values: &[(&str, u32)]) -> u32 {
            let id = self.header(name, KIND_ENUM, false, values.len() as u32, 4);
            for &(vname, v) in values {
                let vname = self.str(vname);
                self.words(&[vname, v]);
            }
            id
        }

        fn func(&mut self, name: &str) -> u32 {
            let proto = self.header("", KIND_FUNC_PROTO, false, 1, 0);
            self.words(&[0, 0]);
            self.header(name, KIND_FUNC, false, 0, proto)
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A miniature kernel: the structs `kernel_layout` needs, with members
    /// hidden inside anonymous unions/structs and a bitfield before them.
    fn synthetic_kernel() -> Vec<u8> {
        let mut b = Builder::new();
        let u8_t = b.int("u8", 1);
        let u16_t = b.int("u16", 2);
        let u32_t = b.int("u32", 4);
        let u64_t = b.int("u64", 8);
        let be16 = b.typedef("__be16", u16_t);
        let void_ptr = b.ptr(0);
        let ns_common = b.composite(
            KIND_STRUCT,
            "ns_common",
            16,
            &[("stashed", u64_t, 0, 0), ("inum", u32_t, 64, 0)],
        );
        let net = b.composite(
            KIND_STRUCT,
            "net",
            256,
            &[("passive", u32_t, 0, 0), ("ns", ns_common, 1024, 0)],
        );
        let net_ptr = b.ptr(net);
        let possible_net = b.composite(KIND_STRUCT, "", 8, &[("net", net_ptr, 0, 0)]);
        let possible_net_t = b.typedef("possible_net_t", possible_net);
        let net_device = b.composite(
            KIND_STRUCT,
            "net_device",
            2048,
            &[
                ("name", u64_t, 0, 0),
                ("ifindex", u32_t, 8 * 224, 0),
                ("nd_net", possible_net_t, 8 * 1000, 0),
            ],
        );
        let dev_ptr = b.ptr(net_device);
        // union { struct net_device *dev; unsigned long dev_scratch; }
        let dev_union = b.composite(
            KIND_UNION,
            "",
            8,
            &[("dev", dev_ptr, 0, 0), ("dev_scratch", u64_t, 0, 0)],
        );
        // struct { next, prev, union { dev, dev_scratch } }
        let list_struct = b.composite(
            KIND_STRUCT,
            "",
            24,
            &[
                ("next", void_ptr, 0, 0),
                ("prev", void_ptr, 64, 0),
                ("", dev_union, 128, 0),
            ],
        );
        let head_union = b.composite(
            KIND_UNION,
            "",
            24,
            &[("", list_struct, 0, 0), ("rbnode", u64_t, 0, 0)],
        );
        // struct_group(headers, ...) with a bitfield before `protocol`.
        let headers = b.composite(
            KIND_STRUCT,
            "",
            16,
            &[
                ("pkt_type", u8_t, 0, 3),
                ("ignore_df", u8_t, 3, 1),
                ("protocol", be16, 8 * 8, 0),
                ("network_header", u16_t, 8 * 10, 0),
                ("mac_header", u16_t, 8 * 12, 0),
            ],
        );
        let headers_union = b.composite(
            KIND_UNION,
            "",
            16,
            &[("", headers, 0, 0), ("headers", headers, 0, 0)],
        );
        let const_ptr = b.ptr(0);
        let sk_common = b.composite(
            KIND_STRUCT,
            "sock_common",
            136,
            &[("skc_net", possible_net_t, 8 * 48, 0)],
        );
        let sock = b.composite(
            KIND_STRUCT,
            "sock",
            1000,
            &[("__sk_common", sk_common, 0, 0)],
        );
        let sock_ptr = b.ptr(sock);
        b.composite(
            KIND_STRUCT,
            "sk_buff",
            232,
            &[
                ("", head_union, 0, 0),
                ("sk", sock_ptr, 8 * 24, 0),
                ("_nfct", u64_t, 8 * 104, 0),
                ("len", u32_t, 8 * 112, 0),
                ("", headers_union, 8 * 176, 0),
                ("tail", u32_t, 8 * 192, 0),
                ("head", const_ptr, 8 * 200, 0),
            ],
        );
        b.composite(
            KIND_STRUCT,
            "nf_hook_state",
            48,
            &[
                ("hook", u8_t, 0, 0),
                ("pf", u8_t, 8, 0),
                ("net", net_ptr, 8 * 32, 0),
            ],
        );
        b.composite(
            KIND_STRUCT,
            "nf_conn",
            256,
            &[("status", u64_t, 8 * 128, 0)],
        );
        b.enumeration(
            "skb_drop_reason",
            &[
                ("SKB_NOT_DROPPED_YET", 0),
                ("SKB_DROP_REASON_NO_SOCKET", 3),
                ("SKB_DROP_REASON_TCP_CSUM", 6),
            ],
        );
        b.func("bpf_cast_to_kern_ctx");
        let proto = b.int("int", 4);
        b.typedef("btf_trace_netif_receive_skb", proto);
        b.build()
    }

    #[test]
    fn synthetic_layout_sums_nested_and_anonymous_offsets() {
        let btf = Btf::parse(&synthetic_kernel()).expect("parse");
        let layout = btf.kernel_layout().expect("layout");
        assert_eq!(
            layout.skb_dev, 16,
            "dev inside union inside struct inside union"
        );
        assert_eq!(
            layout.skb_protocol,
            176 + 8,
            "protocol inside struct_group after bitfields"
        );
        assert_eq!(layout.skb_network_header, 186);
        assert_eq!(layout.skb_tail, 192);
        assert_eq!(layout.skb_head, 200);
        assert_eq!(layout.skb_len, 112);
        assert_eq!(layout.skb_nfct, 104);
        assert_eq!(layout.skb_sk, 24);
        assert_eq!(layout.dev_ifindex, 224);
        assert_eq!(layout.dev_nd_net, 1000, "possible_net_t through a typedef");
        assert_eq!(layout.net_ns_inum, 128 + 8);
        assert_eq!(layout.sk_net, 48);
        assert_eq!(layout.nf_state_hook, 0);
        assert_eq!(layout.nf_state_pf, 1);
        assert_eq!(layout.nf_state_net, 32);
        assert_eq!(layout.nf_conn_status, 128);
        assert_eq!(layout.valid, 1);
    }

    #[test]
    fn bitfield_member_is_rejected_with_its_bit_offset() {
        let btf = Btf::parse(&synthetic_kernel()).expect("parse");
        match btf.member_offset("sk_buff", &["ignore_df"]) {
            Err(BtfError::NotByteAligned { bit_offset, .. }) => assert_eq!(bit_offset, 8 * 176 + 3),
            other => panic!("expected NotByteAligned, got {other:?}"),
        }
    }

    #[test]
    fn missing_struct_and_member_are_named() {
        let btf = Btf::parse(&synthetic_kernel()).expect("parse");
        let err = btf.member_offset("task_struct", &["pid"]).unwrap_err();
        assert!(
            matches!(&err, BtfError::MissingType(n) if n == "task_struct"),
            "{err}"
        );
        let err = btf.member_offset("net", &["ns", "count"]).unwrap_err();
        assert!(
            matches!(&err, BtfError::MissingMember { ty, member } if ty == "net" && member == "ns.count"),
            "{err}"
        );
    }

    #[test]
    fn drop_reasons_and_funcs() {
        let btf = Btf::parse(&synthetic_kernel()).expect("parse");
        let reasons = btf.drop_reason_names().expect("enum");
        assert_eq!(reasons.get(&3).map(String::as_str), Some("no_socket"));
        assert_eq!(reasons.get(&6).map(String::as_str), Some("tcp_csum"));
        assert_eq!(
            reasons.get(&0).map(String::as_str),
            Some("skb_not_dropped_yet")
        );
        let id = btf.func_id("bpf_cast_to_kern_ctx").expect("func");
        assert_eq!(btf.header(id).map(|h| h.kind), Some(KIND_FUNC));
        assert!(matches!(btf.func_id("nope"), Err(BtfError::MissingFunc(_))));
        let tp = btf.tracepoint_id("netif_receive_skb").expect("typedef");
        assert_eq!(btf.header(tp).map(|h| h.kind), Some(KIND_TYPEDEF));
        assert_eq!(tp as usize, btf.type_count() - 1, "the last type made");
        assert!(matches!(
            btf.tracepoint_id("no_such_tp"),
            Err(BtfError::MissingType(n)) if n == "btf_trace_no_such_tp"
        ));
    }

    #[test]
    fn truncated_and_garbage_blobs_are_errors() {
        let blob = synthetic_kernel();
        assert!(matches!(
            Btf::parse(&blob[..10]),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(
            Btf::parse(&[0u8; 64]),
            Err(BtfError::Malformed(_))
        ));
        // Cut the type section in the middle of a struct: the header still
        // claims the full length, so the sections are out of bounds.
        assert!(Btf::parse(&blob[..blob.len() / 2]).is_err());
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = Btf::from_file("/nonexistent/btf").err().expect("error");
        assert!(matches!(err, BtfError::Read { .. }), "{err}");
    }

    #[test]
    fn real_vmlinux_layout_is_plausible() {
        let btf = match Btf::vmlinux() {
            Ok(btf) => btf,
            Err(e) => {
                eprintln!("skipping: {e}");
                return;
            }
        };
        assert!(btf.type_count() > 10_000);
        let l = btf.kernel_layout().expect("layout from vmlinux");
        assert_eq!(l.valid, 1);
        // sk_buff is ~232 bytes; every field we read lies inside it.
        for (name, off) in [
            ("head", l.skb_head),
            ("len", l.skb_len),
            ("network_header", l.skb_network_header),
            ("tail", l.skb_tail),
            ("protocol", l.skb_protocol),
            ("_nfct", l.skb_nfct),
        ] {
            assert!(off > 0 && off < 256, "sk_buff.{name} at {off}");
        }
        assert_eq!(l.skb_dev, 16, "dev follows next/prev");
        assert!(l.skb_sk > 0 && l.skb_sk < 64);
        assert!(l.dev_ifindex > 0 && l.dev_ifindex < 4096);
        assert!(l.dev_nd_net > 0 && l.dev_nd_net < 8192);
        assert!(l.net_ns_inum > 0 && l.net_ns_inum < 1024);
        assert!(l.sk_net > 0 && l.sk_net < 256);
        assert!(l.nf_state_net > l.nf_state_pf);
        assert!(
            l.nf_conn_status > 0 && l.nf_conn_status < 512,
            "nf_conn.status"
        );
        let reasons = btf.drop_reason_names().expect("drop reasons");
        assert!(reasons.values().any(|n| n == "no_socket"), "{reasons:?}");
        assert!(btf.func_id("bpf_cast_to_kern_ctx").is_ok());
        assert!(btf.tracepoint_id("netif_receive_skb").is_ok());
    }
}
