"""How state values become stored bytes and back: msgspec MessagePack, a size limit, optional zlib.

The raw form (what the cache and the write-behind buffer keep, and what ``max_state_bytes`` limits) is the
value's msgpack encoding. The stored form adds a one-byte header — ``0x00`` raw, ``0x01`` zlib — so reading is
transparent whatever the compression setting was when a value was written; inflating is bounded by
``max_state_bytes``, since bytes in a shared database may come from another process.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import msgspec

from ..errors import StateDecodeError, StateEncodeError, StateTooLargeError

__all__ = ["StateCodec"]

_RAW: Final = b"\x00"
_ZLIB: Final = b"\x01"
_ZLIB_LEVEL: Final = 1  # fast: state is written far more often than it is worth squeezing


class StateCodec:
    """Encoder, decoders (one per type, built once), the size limit and compression of one store::

    codec = StateCodec(max_state_bytes=1024, compress_from_bytes=256)
    raw = codec.encode("k", {"a": 1})
    assert codec.decode("k", codec.unpack("k", codec.pack(raw))) == {"a": 1}
    """

    __slots__ = ("_any", "_compress_from", "_decoders", "_encoder", "compressed", "max_bytes")

    def __init__(self, *, max_state_bytes: int, compress_from_bytes: int | None = None) -> None:
        self.max_bytes = max_state_bytes
        self._compress_from = compress_from_bytes
        self._encoder = msgspec.msgpack.Encoder()
        self._any: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
        self.compressed = 0

    def decoder_for(self, tp: Any) -> msgspec.msgpack.Decoder[Any]:
        """The decoder for values of type ``tp`` (built once per type)."""
        dec = self._decoders.get(tp)
        if dec is None:
            dec = self._decoders[tp] = msgspec.msgpack.Decoder(tp)
        return dec

    def encode(self, key: str, value: Any) -> bytes:
        """``value`` as raw msgpack; raises StateEncodeError or StateTooLargeError."""
        try:
            raw = self._encoder.encode(value)
        except (TypeError, msgspec.EncodeError) as exc:
            raise StateEncodeError(
                f"The state value for key {show_key(key)} cannot be encoded ({exc}); store dicts, lists, strings, "
                "numbers, msgspec Structs or other types msgspec supports.",
                key=key,
            ) from exc
        if len(raw) > self.max_bytes:
            raise StateTooLargeError(
                f"The state value for key {show_key(key)} encodes to {len(raw)} bytes, over max_state_bytes "
                f"({self.max_bytes}) of [memory]; store less under one key (split it, or keep large data elsewhere "
                "and store a reference to it), or raise max_state_bytes.",
                key=key,
                size_bytes=len(raw),
                limit_bytes=self.max_bytes,
            )
        return raw

    def decode(self, key: str, raw: bytes, decoder: msgspec.msgpack.Decoder[Any] | None = None) -> Any:
        """Decode raw msgpack (with ``decoder``, or untyped); raises StateDecodeError."""
        dec = decoder or self._any
        try:
            return dec.decode(raw)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise _undecodable(key, dec, exc) from exc

    def load(self, key: str, stored: bytes, decoder: msgspec.msgpack.Decoder[Any] | None = None) -> Any:
        """``decode(key, unpack(key, stored), decoder)`` in one call: the read path of a backend that answers at
        once (memory), where a second call costs as much as the lookup itself."""
        # The raw form is the common case; anything else (compressed, foreign bytes) takes unpack's checks.
        raw = stored[1:] if stored[:1] == _RAW else self.unpack(key, stored)
        dec = decoder or self._any
        try:
            return dec.decode(raw)
        except msgspec.DecodeError as exc:
            raise _undecodable(key, dec, exc) from exc

    def pack(self, raw: bytes) -> bytes:
        """The stored form of raw msgpack: compressed when enabled, large enough, and smaller for it."""
        limit = self._compress_from
        if limit is not None and len(raw) >= limit:
            packed = zlib.compress(raw, _ZLIB_LEVEL)
            if len(packed) < len(raw):
                self.compressed += 1
                return _ZLIB + packed
        return _RAW + raw

    def unpack(self, key: str, stored: bytes) -> bytes:
        """The raw msgpack of a stored value; raises StateDecodeError for bytes this codec did not write."""
        head = stored[:1]
        if head == _RAW:
            return stored[1:]
        if head == _ZLIB:
            inflater = zlib.decompressobj()
            try:
                raw = inflater.decompress(stored[1:], self.max_bytes + 1)
            except zlib.error as exc:
                raise StateDecodeError(
                    f"The stored state of key {show_key(key)} is corrupt ({exc}); delete the key.", key=key
                ) from exc
            if len(raw) > self.max_bytes or inflater.unconsumed_tail:
                raise StateDecodeError(
                    f"The stored state of key {show_key(key)} inflates to more than max_state_bytes "
                    f"({self.max_bytes}); raise max_state_bytes to read it, or delete the key.",
                    key=key,
                )
            return raw
        raise StateDecodeError(
            f"The stored state of key {show_key(key)} has an unknown format (it was not written by agentflow's "
            "state store); delete the key or use another key_prefix.",
            key=key,
        )


def show_key(key: str) -> str:
    """A key for an error message: quoted, and shortened when long."""
    return repr(key) if len(key) <= 80 else repr(key[:77] + "...")


def _undecodable(key: str, dec: msgspec.msgpack.Decoder[Any], exc: msgspec.DecodeError) -> StateDecodeError:
    return StateDecodeError(
        f"The state value of key {show_key(key)} does not decode as {_type_name(dec.type)} ({exc}); read it "
        "with the type it was written with, or delete the key.",
        key=key,
    )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)
