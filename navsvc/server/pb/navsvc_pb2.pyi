from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegistrationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGISTRATION_STATE_UNSPECIFIED: _ClassVar[RegistrationState]
    QUEUED: _ClassVar[RegistrationState]
    RUNNING: _ClassVar[RegistrationState]
    SUCCEEDED: _ClassVar[RegistrationState]
    FAILED: _ClassVar[RegistrationState]
    CANCELLED: _ClassVar[RegistrationState]
    INTERRUPTED: _ClassVar[RegistrationState]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    PENDING: _ClassVar[Decision]
    APPROVED: _ClassVar[Decision]
    REJECTED: _ClassVar[Decision]
REGISTRATION_STATE_UNSPECIFIED: RegistrationState
QUEUED: RegistrationState
RUNNING: RegistrationState
SUCCEEDED: RegistrationState
FAILED: RegistrationState
CANCELLED: RegistrationState
INTERRUPTED: RegistrationState
DECISION_UNSPECIFIED: Decision
PENDING: Decision
APPROVED: Decision
REJECTED: Decision

class FileRef(_message.Message):
    __slots__ = ("server_path", "upload_id")
    SERVER_PATH_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    server_path: str
    upload_id: str
    def __init__(self, server_path: _Optional[str] = ..., upload_id: _Optional[str] = ...) -> None: ...

class Matrix4x4(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Point3(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ...) -> None: ...

class Case(_message.Message):
    __slots__ = ("case_id", "label", "created_s", "plan_id", "registration_id", "approved_registration_id", "active", "calibration_id")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_S_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVED_REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    label: str
    created_s: float
    plan_id: str
    registration_id: str
    approved_registration_id: str
    active: bool
    calibration_id: str
    def __init__(self, case_id: _Optional[str] = ..., label: _Optional[str] = ..., created_s: _Optional[float] = ..., plan_id: _Optional[str] = ..., registration_id: _Optional[str] = ..., approved_registration_id: _Optional[str] = ..., active: _Optional[bool] = ..., calibration_id: _Optional[str] = ...) -> None: ...

class CreateCaseRequest(_message.Message):
    __slots__ = ("label",)
    LABEL_FIELD_NUMBER: _ClassVar[int]
    label: str
    def __init__(self, label: _Optional[str] = ...) -> None: ...

class ListCasesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCasesResponse(_message.Message):
    __slots__ = ("cases",)
    CASES_FIELD_NUMBER: _ClassVar[int]
    cases: _containers.RepeatedCompositeFieldContainer[Case]
    def __init__(self, cases: _Optional[_Iterable[_Union[Case, _Mapping]]] = ...) -> None: ...

class GetCaseRequest(_message.Message):
    __slots__ = ("case_id",)
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    def __init__(self, case_id: _Optional[str] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("case_id", "filename", "size_bytes", "sha256_hex")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_HEX_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    filename: str
    size_bytes: int
    sha256_hex: str
    def __init__(self, case_id: _Optional[str] = ..., filename: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256_hex: _Optional[str] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class StoredFile(_message.Message):
    __slots__ = ("upload_id", "filename", "size_bytes", "sha256_hex")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_HEX_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    filename: str
    size_bytes: int
    sha256_hex: str
    def __init__(self, upload_id: _Optional[str] = ..., filename: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256_hex: _Optional[str] = ...) -> None: ...

class Trajectory(_message.Message):
    __slots__ = ("name", "entry_lps", "target_lps", "diameter_mm", "depth_mm")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRY_LPS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LPS_FIELD_NUMBER: _ClassVar[int]
    DIAMETER_MM_FIELD_NUMBER: _ClassVar[int]
    DEPTH_MM_FIELD_NUMBER: _ClassVar[int]
    name: str
    entry_lps: Point3
    target_lps: Point3
    diameter_mm: float
    depth_mm: float
    def __init__(self, name: _Optional[str] = ..., entry_lps: _Optional[_Union[Point3, _Mapping]] = ..., target_lps: _Optional[_Union[Point3, _Mapping]] = ..., diameter_mm: _Optional[float] = ..., depth_mm: _Optional[float] = ...) -> None: ...

class LoadPlanRequest(_message.Message):
    __slots__ = ("case_id", "plan", "mri", "labels")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MRI_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    plan: FileRef
    mri: FileRef
    labels: FileRef
    def __init__(self, case_id: _Optional[str] = ..., plan: _Optional[_Union[FileRef, _Mapping]] = ..., mri: _Optional[_Union[FileRef, _Mapping]] = ..., labels: _Optional[_Union[FileRef, _Mapping]] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("plan_id", "case_id", "trajectories", "plan_sha256", "mri_sha256", "labels_sha256", "created_s")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    PLAN_SHA256_FIELD_NUMBER: _ClassVar[int]
    MRI_SHA256_FIELD_NUMBER: _ClassVar[int]
    LABELS_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_S_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    case_id: str
    trajectories: _containers.RepeatedCompositeFieldContainer[Trajectory]
    plan_sha256: str
    mri_sha256: str
    labels_sha256: str
    created_s: float
    def __init__(self, plan_id: _Optional[str] = ..., case_id: _Optional[str] = ..., trajectories: _Optional[_Iterable[_Union[Trajectory, _Mapping]]] = ..., plan_sha256: _Optional[str] = ..., mri_sha256: _Optional[str] = ..., labels_sha256: _Optional[str] = ..., created_s: _Optional[float] = ...) -> None: ...

class QA(_message.Message):
    __slots__ = ("verdict", "reasons", "figures", "picture_path")
    class FiguresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    PICTURE_PATH_FIELD_NUMBER: _ClassVar[int]
    verdict: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    figures: _containers.ScalarMap[str, float]
    picture_path: str
    def __init__(self, verdict: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., figures: _Optional[_Mapping[str, float]] = ..., picture_path: _Optional[str] = ...) -> None: ...

class FluoroViewRef(_message.Message):
    __slots__ = ("image", "geometry")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    image: FileRef
    geometry: FileRef
    def __init__(self, image: _Optional[_Union[FileRef, _Mapping]] = ..., geometry: _Optional[_Union[FileRef, _Mapping]] = ...) -> None: ...

class StartRegistrationRequest(_message.Message):
    __slots__ = ("case_id", "ct", "options", "fluoro")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    CT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FLUORO_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    ct: FileRef
    options: _containers.ScalarMap[str, str]
    fluoro: _containers.RepeatedCompositeFieldContainer[FluoroViewRef]
    def __init__(self, case_id: _Optional[str] = ..., ct: _Optional[_Union[FileRef, _Mapping]] = ..., options: _Optional[_Mapping[str, str]] = ..., fluoro: _Optional[_Iterable[_Union[FluoroViewRef, _Mapping]]] = ...) -> None: ...

class Registration(_message.Message):
    __slots__ = ("registration_id", "case_id", "plan_id", "state", "decision", "qa", "T_ct_from_mri", "error", "timings_s", "created_s", "finished_s", "decided_by", "decision_reason")
    class TimingsSEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    QA_FIELD_NUMBER: _ClassVar[int]
    T_CT_FROM_MRI_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_S_FIELD_NUMBER: _ClassVar[int]
    CREATED_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_S_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    case_id: str
    plan_id: str
    state: RegistrationState
    decision: Decision
    qa: QA
    T_ct_from_mri: Matrix4x4
    error: str
    timings_s: _containers.ScalarMap[str, float]
    created_s: float
    finished_s: float
    decided_by: str
    decision_reason: str
    def __init__(self, registration_id: _Optional[str] = ..., case_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., state: _Optional[_Union[RegistrationState, str]] = ..., decision: _Optional[_Union[Decision, str]] = ..., qa: _Optional[_Union[QA, _Mapping]] = ..., T_ct_from_mri: _Optional[_Union[Matrix4x4, _Mapping]] = ..., error: _Optional[str] = ..., timings_s: _Optional[_Mapping[str, float]] = ..., created_s: _Optional[float] = ..., finished_s: _Optional[float] = ..., decided_by: _Optional[str] = ..., decision_reason: _Optional[str] = ...) -> None: ...

class RegistrationEvent(_message.Message):
    __slots__ = ("registration_id", "state", "stage", "fraction", "message", "qa", "error")
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    QA_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    state: RegistrationState
    stage: str
    fraction: float
    message: str
    qa: QA
    error: str
    def __init__(self, registration_id: _Optional[str] = ..., state: _Optional[_Union[RegistrationState, str]] = ..., stage: _Optional[str] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ..., qa: _Optional[_Union[QA, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class WatchRegistrationRequest(_message.Message):
    __slots__ = ("registration_id",)
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    def __init__(self, registration_id: _Optional[str] = ...) -> None: ...

class GetRegistrationRequest(_message.Message):
    __slots__ = ("registration_id",)
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    def __init__(self, registration_id: _Optional[str] = ...) -> None: ...

class CancelRegistrationRequest(_message.Message):
    __slots__ = ("registration_id",)
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    def __init__(self, registration_id: _Optional[str] = ...) -> None: ...

class ApproveRegistrationRequest(_message.Message):
    __slots__ = ("registration_id", "override_reason")
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_REASON_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    override_reason: str
    def __init__(self, registration_id: _Optional[str] = ..., override_reason: _Optional[str] = ...) -> None: ...

class RejectRegistrationRequest(_message.Message):
    __slots__ = ("registration_id", "reason")
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    reason: str
    def __init__(self, registration_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetResultFileRequest(_message.Message):
    __slots__ = ("registration_id", "name")
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    name: str
    def __init__(self, registration_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("name", "size_bytes", "sha256_hex", "data", "available")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_HEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    sha256_hex: str
    data: bytes
    available: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256_hex: _Optional[str] = ..., data: _Optional[bytes] = ..., available: _Optional[_Iterable[str]] = ...) -> None: ...

class FiducialPair(_message.Message):
    __slots__ = ("name", "ct_lps", "device")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CT_LPS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    ct_lps: Point3
    device: Point3
    def __init__(self, name: _Optional[str] = ..., ct_lps: _Optional[_Union[Point3, _Mapping]] = ..., device: _Optional[_Union[Point3, _Mapping]] = ...) -> None: ...

class SetCalibrationRequest(_message.Message):
    __slots__ = ("case_id", "T_device_from_ct", "fiducials")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    T_DEVICE_FROM_CT_FIELD_NUMBER: _ClassVar[int]
    FIDUCIALS_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    T_device_from_ct: Matrix4x4
    fiducials: FiducialList
    def __init__(self, case_id: _Optional[str] = ..., T_device_from_ct: _Optional[_Union[Matrix4x4, _Mapping]] = ..., fiducials: _Optional[_Union[FiducialList, _Mapping]] = ...) -> None: ...

class FiducialList(_message.Message):
    __slots__ = ("pairs",)
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[FiducialPair]
    def __init__(self, pairs: _Optional[_Iterable[_Union[FiducialPair, _Mapping]]] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("calibration_id", "case_id", "T_device_from_ct", "fre_mm_rms", "fiducial_count", "created_s")
    CALIBRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    T_DEVICE_FROM_CT_FIELD_NUMBER: _ClassVar[int]
    FRE_MM_RMS_FIELD_NUMBER: _ClassVar[int]
    FIDUCIAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_S_FIELD_NUMBER: _ClassVar[int]
    calibration_id: str
    case_id: str
    T_device_from_ct: Matrix4x4
    fre_mm_rms: float
    fiducial_count: int
    created_s: float
    def __init__(self, calibration_id: _Optional[str] = ..., case_id: _Optional[str] = ..., T_device_from_ct: _Optional[_Union[Matrix4x4, _Mapping]] = ..., fre_mm_rms: _Optional[float] = ..., fiducial_count: _Optional[int] = ..., created_s: _Optional[float] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("name", "entry_lps", "target_lps", "diameter_mm", "entry_device", "target_device")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRY_LPS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LPS_FIELD_NUMBER: _ClassVar[int]
    DIAMETER_MM_FIELD_NUMBER: _ClassVar[int]
    ENTRY_DEVICE_FIELD_NUMBER: _ClassVar[int]
    TARGET_DEVICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    entry_lps: Point3
    target_lps: Point3
    diameter_mm: float
    entry_device: Point3
    target_device: Point3
    def __init__(self, name: _Optional[str] = ..., entry_lps: _Optional[_Union[Point3, _Mapping]] = ..., target_lps: _Optional[_Union[Point3, _Mapping]] = ..., diameter_mm: _Optional[float] = ..., entry_device: _Optional[_Union[Point3, _Mapping]] = ..., target_device: _Optional[_Union[Point3, _Mapping]] = ...) -> None: ...

class TargetState(_message.Message):
    __slots__ = ("state", "case_id", "registration_id", "qa_verdict", "targets", "timestamp_s", "reason", "device_calibrated", "T_device_from_ct")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    QA_VERDICT_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    T_DEVICE_FROM_CT_FIELD_NUMBER: _ClassVar[int]
    state: str
    case_id: str
    registration_id: str
    qa_verdict: str
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    timestamp_s: float
    reason: str
    device_calibrated: bool
    T_device_from_ct: Matrix4x4
    def __init__(self, state: _Optional[str] = ..., case_id: _Optional[str] = ..., registration_id: _Optional[str] = ..., qa_verdict: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., timestamp_s: _Optional[float] = ..., reason: _Optional[str] = ..., device_calibrated: _Optional[bool] = ..., T_device_from_ct: _Optional[_Union[Matrix4x4, _Mapping]] = ...) -> None: ...

class StreamTargetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTargetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "timestamp_s", "actor", "role", "action", "case_id", "subject_id", "detail")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    timestamp_s: float
    actor: str
    role: str
    action: str
    case_id: str
    subject_id: str
    detail: str
    def __init__(self, seq: _Optional[int] = ..., timestamp_s: _Optional[float] = ..., actor: _Optional[str] = ..., role: _Optional[str] = ..., action: _Optional[str] = ..., case_id: _Optional[str] = ..., subject_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("case_id", "after_seq", "limit")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    after_seq: int
    limit: int
    def __init__(self, case_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...
