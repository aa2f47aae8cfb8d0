//! The control channel between a host and its worker: a Unix socket carrying frames. Calls
//! never use it (they go through the [`lanes`](super::lanes)); it carries what happens rarely
//! and may be large or slow: loading, Init, validate_config, health, state hand-over,
//! Shutdown, the plugin's log lines, and the plugin's calls to other plugins.
//!
//! Every frame has the same shape, so that reading one needs no knowledge of its kind:
//! `len: u32` (of what follows), `kind: u8`, `status: u8`, `id: u64`, `number: u64`, then two
//! byte strings, each `len: u32` + bytes, the second one optional (`u32::MAX` for none).
//! What the fields mean is said with each [`Kind`].

use std::io::{Read, Write};

use abi_stable::std_types::{RSlice, RStr};
use plugin_api::ffi::{Extension, RawEvent};

use super::lanes::MESSAGE_LIMIT;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Worker: the library loaded (and the worker confined itself). `first`: the plugin's info
    /// as JSON; `second`: what it is confined to (`sandbox::Confined`) as JSON.
    Loaded = 1,
    /// Worker: the library was refused. `first`: why.
    Refused = 2,
    /// Worker: the answer to request `id`. `status`: the plugin's; `number`: a health level;
    /// `first`: the output or message; `second`: present when Init created an instance.
    Reply = 3,
    /// Worker: a log line. `status`: the level; `first`: the message.
    Log = 4,
    /// Worker: the plugin calls another plugin. `id`: to answer with; `number`: the deadline
    /// (ns since the epoch, 0 for none); `status`: the lane it calls from, or 255;
    /// `first`: the plugin's name; `second`: the input.
    Call = 5,
    /// Worker: the plugin publishes an event. `id`: to answer with (a `CallReply`);
    /// `number`: the emitter token (0 from a call or handler); `first`: the
    /// [`EventHeader`] as JSON; `second`: the data.
    Emit = 6,
    /// Host: Init. `first`: the configuration; `second`: the state to take over, if any.
    Init = 10,
    /// Host: validate_config. `first`: the configuration.
    Validate = 11,
    /// Host: health.
    Health = 12,
    /// Host: save the state to hand over.
    SaveState = 13,
    /// Host: Shutdown, then exit.
    Shutdown = 14,
    /// Host: the answer to the worker's call `id`. `status`, `first`: the callee's.
    CallReply = 15,
    /// Host: deliver an event to the handler. `number`: its deadline (ns since the epoch);
    /// `first`: the [`EventHeader`] as JSON; `second`: the data.
    Event = 16,
    /// Host: start the event source. `number`: the emitter token.
    Start = 17,
    /// Host: stop the event source and wait for its start to return.
    Stop = 18,
}

impl Kind {
    fn from_u8(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Loaded,
            2 => Kind::Refused,
            3 => Kind::Reply,
            4 => Kind::Log,
            5 => Kind::Call,
            6 => Kind::Emit,
            10 => Kind::Init,
            11 => Kind::Validate,
            12 => Kind::Health,
            13 => Kind::SaveState,
            14 => Kind::Shutdown,
            15 => Kind::CallReply,
            16 => Kind::Event,
            17 => Kind::Start,
            18 => Kind::Stop,
            _ => return None,
        })
    }
}

/// An event's attributes but its data, as they cross the control channel (as JSON: events
/// cross it rarely next to calls, and a worker's bytes are checked by parsing them).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct EventHeader {
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) source: String,
    pub(crate) topic: String,
    #[serde(default)]
    pub(crate) time_unix_nanos: u64,
    pub(crate) datacontenttype: String,
    #[serde(default)]
    pub(crate) extensions: Vec<(String, String)>,
}

impl EventHeader {
    /// The header of `event` as the host sends it to a worker.
    pub(crate) fn of(event: &crate::event::Event) -> Self {
        let mut id = String::new();
        EventHeader {
            id: event.id_into(&mut id).to_owned(),
            source: event.source().to_owned(),
            topic: event.topic().to_owned(),
            time_unix_nanos: crate::runtime::delivery::unix_nanos(event.time()),
            datacontenttype: event.content_type().to_owned(),
            extensions: event
                .extensions()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// Its extensions as the boundary carries them, for [`raw`](Self::raw).
    pub(crate) fn extensions(&self) -> Vec<Extension<'_>> {
        self.extensions
            .iter()
            .map(|(name, value)| Extension {
                name: RStr::from_str(name),
                value: RStr::from_str(value),
            })
            .collect()
    }

    /// The event as a plugin's entry points take it, with `data` and the `extensions` made
    /// from this header.
    pub(crate) fn raw<'a>(
        &'a self,
        extensions: &'a [Extension<'a>],
        data: &'a [u8],
    ) -> RawEvent<'a> {
        RawEvent {
            id: RStr::from_str(&self.id),
            source: RStr::from_str(&self.source),
            topic: RStr::from_str(&self.topic),
            time_unix_nanos: self.time_unix_nanos,
            datacontenttype: RStr::from_str(&self.datacontenttype),
            data: RSlice::from_slice(data),
            extensions: RSlice::from_slice(extensions),
        }
    }
}

/// One message on the control channel.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) kind: Kind,
    pub(crate) status: u8,
    pub(crate) id: u64,
    pub(crate) number: u64,
    pub(crate) first: Vec<u8>,
    pub(crate) second: Option<Vec<u8>>,
}

/// The largest frame read: two messages and change. A larger length is a broken peer.
const FRAME_LIMIT: usize = 2 * MESSAGE_LIMIT + 64;
const NONE: u32 = u32::MAX;

impl Frame {
    /// A frame of `kind` with no fields set.
    pub(crate) fn new(kind: Kind) -> Frame {
        Frame {
            kind,
            status: 0,
            id: 0,
            number: 0,
            first: Vec::new(),
            second: None,
        }
    }

    /// Its length on the wire, after the length word.
    pub(crate) fn len(&self) -> usize {
        1 + 1 + 8 + 8 + 4 + self.first.len() + 4 + self.second.as_ref().map_or(0, Vec::len)
    }

    /// Whether it is small enough to be sent ([`write_to`](Self::write_to) refuses it
    /// otherwise, and the other side would refuse to read it).
    pub(crate) fn fits(&self) -> bool {
        self.len() <= FRAME_LIMIT
    }

    /// Writes the frame with one `write_all`, so that frames from several threads sharing a
    /// locked writer never interleave.
    pub(crate) fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let len = self.len();
        if len > FRAME_LIMIT {
            return Err(std::io::Error::other(format!(
                "a message of {len} bytes is more than the limit of {FRAME_LIMIT}"
            )));
        }
        let mut bytes = Vec::with_capacity(4 + len);
        bytes.extend_from_slice(&(len as u32).to_le_bytes());
        bytes.push(self.kind as u8);
        bytes.push(self.status);
        bytes.extend_from_slice(&self.id.to_le_bytes());
        bytes.extend_from_slice(&self.number.to_le_bytes());
        bytes.extend_from_slice(&(self.first.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&self.first);
        match &self.second {
            Some(second) => {
                bytes.extend_from_slice(&(second.len() as u32).to_le_bytes());
                bytes.extend_from_slice(second);
            }
            None => bytes.extend_from_slice(&NONE.to_le_bytes()),
        }
        out.write_all(&bytes)
    }

    /// Reads one frame; `Ok(None)` at the end of the stream.
    pub(crate) fn read_from(input: &mut impl Read) -> std::io::Result<Option<Frame>> {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if !(22 + 4..=FRAME_LIMIT).contains(&len) {
            return Err(broken("a frame length out of range"));
        }
        let mut body = vec![0u8; len];
        input.read_exact(&mut body)?;
        let mut at = Reader(&body);
        let kind = Kind::from_u8(at.u8()?).ok_or_else(|| broken("an unknown frame kind"))?;
        let status = at.u8()?;
        let id = at.u64()?;
        let number = at.u64()?;
        let first = at.bytes()?.ok_or_else(|| broken("a missing field"))?;
        let second = at.bytes()?;
        Ok(Some(Frame {
            kind,
            status,
            id,
            number,
            first,
            second,
        }))
    }
}

fn broken(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("control channel: {what}"),
    )
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> std::io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(broken("a frame shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> std::io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        if len == NONE {
            return Ok(None);
        }
        Ok(Some(self.take(len as usize)?.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_as_written() {
        let mut frame = Frame::new(Kind::Call);
        frame.status = 3;
        frame.id = 42;
        frame.number = u64::MAX;
        frame.first = b"storage".to_vec();
        frame.second = Some(b"input".to_vec());
        let mut bytes = Vec::new();
        frame.write_to(&mut bytes).unwrap();
        Frame::new(Kind::Health).write_to(&mut bytes).unwrap();
        let mut input = bytes.as_slice();
        let back = Frame::read_from(&mut input).unwrap().unwrap();
        assert_eq!(
            (back.kind, back.status, back.id, back.number),
            (Kind::Call, 3, 42, u64::MAX)
        );
        assert_eq!((back.first, back.second), (frame.first, frame.second));
        let health = Frame::read_from(&mut input).unwrap().unwrap();
        assert_eq!((health.kind, health.second), (Kind::Health, None));
        assert!(Frame::read_from(&mut input).unwrap().is_none());
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let mut bytes = Vec::new();
        Frame::new(Kind::Init).write_to(&mut bytes).unwrap();
        for cut in 1..bytes.len() {
            let _ = Frame::read_from(&mut &bytes[..cut]);
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Frame::read_from(&mut huge.as_slice()).is_err());
        let mut unknown = bytes.clone();
        unknown[4] = 99;
        assert!(Frame::read_from(&mut unknown.as_slice()).is_err());
        let mut long_field = bytes;
        long_field[22..26].copy_from_slice(&1000u32.to_le_bytes());
        assert!(Frame::read_from(&mut long_field.as_slice()).is_err());
    }
}
