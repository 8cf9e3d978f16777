from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserDetailRequest(_message.Message):
    __slots__ = ("user_id", "to", "limit", "cursor")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    to: str
    limit: int
    cursor: str
    def __init__(self, user_id: _Optional[str] = ..., to: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., **kwargs) -> None: ...

class UsageEvent(_message.Message):
    __slots__ = ("source_id", "event_id", "type", "started_at", "ended_at", "duration_sec", "bytes_up", "bytes_down", "meta_json")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_SEC_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    event_id: str
    type: str
    started_at: str
    ended_at: str
    duration_sec: int
    bytes_up: int
    bytes_down: int
    meta_json: str
    def __init__(self, source_id: _Optional[str] = ..., event_id: _Optional[str] = ..., type: _Optional[str] = ..., started_at: _Optional[str] = ..., ended_at: _Optional[str] = ..., duration_sec: _Optional[int] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., meta_json: _Optional[str] = ...) -> None: ...

class TypeTotals(_message.Message):
    __slots__ = ("type", "events", "duration_sec", "bytes_up", "bytes_down")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SEC_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    type: str
    events: int
    duration_sec: int
    bytes_up: int
    bytes_down: int
    def __init__(self, type: _Optional[str] = ..., events: _Optional[int] = ..., duration_sec: _Optional[int] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ...) -> None: ...

class UserDetailResponse(_message.Message):
    __slots__ = ("user_id", "to", "events", "totals", "has_totals", "next_cursor")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    HAS_TOTALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    to: str
    events: _containers.RepeatedCompositeFieldContainer[UsageEvent]
    totals: _containers.RepeatedCompositeFieldContainer[TypeTotals]
    has_totals: bool
    next_cursor: str
    def __init__(self, user_id: _Optional[str] = ..., to: _Optional[str] = ..., events: _Optional[_Iterable[_Union[UsageEvent, _Mapping]]] = ..., totals: _Optional[_Iterable[_Union[TypeTotals, _Mapping]]] = ..., has_totals: _Optional[bool] = ..., next_cursor: _Optional[str] = ..., **kwargs) -> None: ...

class GlobalAggRequest(_message.Message):
    __slots__ = ("granularity", "to", "type")
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    granularity: str
    to: str
    type: str
    def __init__(self, granularity: _Optional[str] = ..., to: _Optional[str] = ..., type: _Optional[str] = ..., **kwargs) -> None: ...

class AggRow(_message.Message):
    __slots__ = ("period", "type", "events", "duration_sec", "bytes_up", "bytes_down")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SEC_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    period: str
    type: str
    events: int
    duration_sec: int
    bytes_up: int
    bytes_down: int
    def __init__(self, period: _Optional[str] = ..., type: _Optional[str] = ..., events: _Optional[int] = ..., duration_sec: _Optional[int] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ...) -> None: ...

class GlobalAggResponse(_message.Message):
    __slots__ = ("granularity", "to", "type", "rows")
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    granularity: str
    to: str
    type: str
    rows: _containers.RepeatedCompositeFieldContainer[AggRow]
    def __init__(self, granularity: _Optional[str] = ..., to: _Optional[str] = ..., type: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[AggRow, _Mapping]]] = ..., **kwargs) -> None: ...
