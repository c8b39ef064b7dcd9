"""``lightbox demo``: the front of the workflow in one command, as a modality lives it.

IHE Scheduled Workflow (RAD TF-1 4), step by step:

1. the registration desk registers a patient and orders a CT (RAD-1/RAD-4
   done in-process, through :class:`~pipeline.worklist.registration.RegistrationService`,
   on the same database the server uses);
2. the modality asks the Modality Worklist for its scheduled steps (RAD-5,
   PS3.4 K: a C-FIND over DICOM to the server's port);
3. it reports MPPS IN PROGRESS (RAD-6, PS3.4 F: N-CREATE);
4. it makes a small CT study carrying the worklist's Study Instance UID,
   Accession Number and patient (RAD TF-2 4.8.4.1.3) and sends it (RAD-8,
   C-STORE);
5. it reports MPPS COMPLETED with the series it made (RAD-7, N-SET);
6. the study appears on the Waiting list, linked to its order: "acquired".

Against a running ``lightbox serve`` (its DICOM port answering) the demo is
one more modality; with nothing listening it starts the DICOM server in this
process for the time of the demo. No patient data is logged; the demo's
patient is fictitious and printed to the terminal only.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from pipeline.config import Settings
from pipeline.errors import InvalidState
from pipeline.worklist.mpps import MPPS
from pipeline.worklist.mwl import MWL_FIND
from pipeline.worklist.registration import ProcedureRequest
from pipeline.worklist.waitinglist import WaitingList, WorkflowState

#: The demo modality's AE title: the order is scheduled on this station.
DEMO_AE = "LIGHTBOX_DEMO"


class DemoFailed(RuntimeError):
    """A step of the demo did not go as a modality expects."""


@dataclass(frozen=True)
class DemoResult:
    patient_id: str
    accession_number: str
    order_id: int
    study_instance_uid: str
    instances: int
    state: WorkflowState | None
    in_process_server: bool


#: Detached Study Management SOP Class (retired), which IHE RAD TF-2 Table 4.8-2
#: still names as the Referenced SOP Class of the Referenced Study Sequence.
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"


def make_study(
    worklist_item: Dataset,
    *,
    slices: int = 3,
    size: int = 64,
    when: datetime | None = None,
    performed_step_uid: str = "",
) -> list[Dataset]:
    """A small CT series for the worklist entry ``worklist_item`` (a C-FIND answer).

    The images copy the patient, Accession Number, Study Instance UID and
    Referring Physician from the worklist, and reference the Requested
    Procedure and Scheduled Procedure Step in the Request Attributes
    Sequence, as IHE RAD TF-2 4.8.4.1.3 (Table 4.8-2) asks of a modality;
    with ``performed_step_uid`` (the MPPS N-CREATE's SOP Instance UID) they
    also reference the Performed Procedure Step they belong to (Referenced
    Performed Procedure Step Sequence, PS3.3 C.7.3.1).
    Pixels are a synthetic phantom (a disc of water in air).
    """
    when = when or datetime.now()
    day, clock = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    step = worklist_item.ScheduledProcedureStepSequence[0]
    series_uid = generate_uid()
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2
    out = []
    for index in range(slices):
        pixels = np.where(disc, 1024 + 8 * index, 24).astype("<i2")
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = worklist_item.get("SpecificCharacterSet") or "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = clock
        ds.AccessionNumber = worklist_item.AccessionNumber
        ds.Modality = step.Modality
        ds.Manufacturer = "Lightbox demo"
        ds.StationName = "DEMO CT"
        ds.ReferringPhysicianName = worklist_item.get("ReferringPhysicianName", "")
        ds.StudyDescription = worklist_item.get("RequestedProcedureDescription", "")
        ds.SeriesDescription = "Demo axial"
        ds.PatientName = worklist_item.PatientName
        ds.PatientID = worklist_item.PatientID
        ds.IssuerOfPatientID = worklist_item.get("IssuerOfPatientID", "")
        ds.PatientBirthDate = worklist_item.get("PatientBirthDate", "")
        ds.PatientSex = worklist_item.get("PatientSex", "")
        ds.StudyInstanceUID = worklist_item.StudyInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.PerformedProcedureStepStartDate = day
        ds.PerformedProcedureStepStartTime = clock
        study = Dataset()  # PS3.3 C.7.2.1 / RAD TF-2 Table 4.8-2: the order's study
        study.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
        study.ReferencedSOPInstanceUID = worklist_item.StudyInstanceUID
        ds.ReferencedStudySequence = [study]
        request = Dataset()
        request.RequestedProcedureID = worklist_item.get("RequestedProcedureID", "")
        request.ScheduledProcedureStepID = step.get("ScheduledProcedureStepID", "")
        request.AccessionNumber = worklist_item.AccessionNumber
        ds.RequestAttributesSequence = [request]
        if performed_step_uid:
            performed = Dataset()
            performed.ReferencedSOPClassUID = MPPS
            performed.ReferencedSOPInstanceUID = performed_step_uid
            ds.ReferencedPerformedProcedureStepSequence = [performed]
        ds.ImagePositionPatient = [0.0, 0.0, -2.5 * index]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 2.5
        ds.FrameOfReferenceUID = series_uid + ".1" if len(series_uid) < 62 else generate_uid()
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = pixels.tobytes()
        out.append(ds)
    return out


def worklist_query(station_ae: str, day: str, modality: str) -> Dataset:
    """The C-FIND Identifier a modality sends (IHE RAD-5 return keys, Table 4.5-3)."""
    ds = Dataset()
    for keyword in (
        "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
        "AccessionNumber", "ReferringPhysicianName", "RequestedProcedureID",
        "RequestedProcedureDescription", "StudyInstanceUID",
    ):  # fmt: skip
        setattr(ds, keyword, "")
    step = Dataset()
    step.ScheduledStationAETitle = station_ae
    step.ScheduledProcedureStepStartDate = day
    step.Modality = modality
    for keyword in (
        "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName",
        "ScheduledProcedureStepDescription", "ScheduledProcedureStepID",
    ):  # fmt: skip
        setattr(step, keyword, "")
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def mpps_in_progress(item: Dataset, station_ae: str, when: datetime) -> Dataset:
    """The MPPS N-CREATE Attribute List (PS3.4 Table F.7.2-1, IHE RAD TF-2 4.6.4.1.2.2)."""
    step = item.ScheduledProcedureStepSequence[0]
    scheduled = Dataset()
    scheduled.StudyInstanceUID = item.StudyInstanceUID
    scheduled.ReferencedStudySequence = []
    scheduled.AccessionNumber = item.AccessionNumber
    scheduled.RequestedProcedureID = item.get("RequestedProcedureID", "")
    scheduled.RequestedProcedureDescription = item.get("RequestedProcedureDescription", "")
    scheduled.ScheduledProcedureStepID = step.get("ScheduledProcedureStepID", "")
    scheduled.ScheduledProcedureStepDescription = step.get("ScheduledProcedureStepDescription", "")
    scheduled.ScheduledProtocolCodeSequence = []
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = [scheduled]
    ds.PatientName = item.PatientName
    ds.PatientID = item.PatientID
    ds.PatientBirthDate = item.get("PatientBirthDate", "")
    ds.PatientSex = item.get("PatientSex", "")
    ds.PerformedProcedureStepID = "PPS" + secrets.token_hex(3).upper()
    ds.PerformedStationAETitle = station_ae
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = when.strftime("%Y%m%d")
    ds.PerformedProcedureStepStartTime = when.strftime("%H%M%S")
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = item.get("RequestedProcedureDescription", "")
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = step.Modality
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def mpps_completed(images: list[Dataset], when: datetime) -> Dataset:
    """The final N-SET (PS3.4 Table F.7.2-2): COMPLETED, the end, the series and images made."""
    series = Dataset()
    series.SeriesInstanceUID = images[0].SeriesInstanceUID
    series.ProtocolName = "Demo"
    series.RetrieveAETitle = ""
    series.PerformingPhysicianName = ""
    series.OperatorsName = ""
    series.SeriesDescription = images[0].SeriesDescription
    refs = []
    for image in images:
        ref = Dataset()
        ref.ReferencedSOPClassUID = image.SOPClassUID
        ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
        refs.append(ref)
    series.ReferencedImageSequence = refs
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = when.strftime("%Y%m%d")
    ds.PerformedProcedureStepEndTime = when.strftime("%H%M%S")
    ds.PerformedSeriesSequence = [series]
    return ds


def _refused(what: str, status: Dataset | None) -> str:
    """Why a DIMSE request failed, for the terminal: the status and its Error Comment."""
    if not status or "Status" not in status:
        return f"{what} got no answer"
    comment = str(status.get("ErrorComment", "") or "").strip()
    reason = f"{what} was refused: status 0x{int(status.Status):04X}"
    return f"{reason} ({comment})" if comment else reason


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def run_demo(
    settings: Settings,
    *,
    echo: Callable[[str], None] = print,
    start_server: bool | None = None,
    slices: int = 3,
    timeout: float = 30.0,
) -> DemoResult:
    """Run the demo against the DICOM server of ``settings`` (see the module docstring).

    Parameters
    ----------
    start_server
        Start the DICOM server in this process (True), use the running one
        (False), or start one only when nothing answers on the port (None).

    Raises
    ------
    DemoFailed
        A DICOM exchange failed, or the study did not reach the Waiting list
        within ``timeout`` seconds.
    """
    from pipeline.runtime import open_runtime

    host = "127.0.0.1" if settings.dicom_host in ("0.0.0.0", "::", "") else settings.dicom_host
    runtime = open_runtime(settings, run_migrations=True)
    server = None
    try:
        if start_server is None:
            start_server = not _listening(host, settings.dicom_port)
        if start_server:
            if _listening(host, settings.dicom_port):
                # The server sets SO_REUSEPORT: a second one would share the
                # port with the first and the associations would split.
                raise DemoFailed(
                    f"something already answers on port {settings.dicom_port}: use --running"
                )
            from pipeline.ingest.actors import build_dicom_server

            server = build_dicom_server(runtime).start()
            echo(f"started a DICOM server in this process on port {settings.dicom_port}")
        now = datetime.now()
        today = now.strftime("%Y%m%d")

        # The association first: with no server answering, nothing is registered
        # (a failed run must not leave a demo order scheduled on the worklist).
        ae = AE(ae_title=DEMO_AE)
        ae.add_requested_context(MWL_FIND)
        ae.add_requested_context(MPPS)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate(host, settings.dicom_port, ae_title=settings.ae_title)
        if not assoc.is_established:
            raise DemoFailed(f"no association with {settings.ae_title} at {host}:{settings.dicom_port}")
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        missing = [name for uid, name in ((MWL_FIND, "worklist"), (MPPS, "MPPS"),
                                          (CTImageStorage, "CT storage")) if uid not in accepted]  # fmt: skip
        if missing:
            assoc.release()
            raise DemoFailed(f"{settings.ae_title} at {host}:{settings.dicom_port} does not offer: "
                             + ", ".join(missing))  # fmt: skip
        order = None
        stored = False
        try:
            # 1. Registration (RAD-1, RAD-4): a fictitious patient and a CT order.
            patient_id = "DEMO-" + secrets.token_hex(4).upper()
            registered = runtime.registration.register_patient(
                patient_id,
                actor="user:demo",
                patient_name="Demo^Dana",
                patient_birth_date=date(1970, 1, 1),
                patient_sex="F",
            )
            order = runtime.registration.create_order(
                registered.patient.id,
                [
                    ProcedureRequest(
                        modality="CT",
                        scheduled_start=now.replace(microsecond=0),
                        description="CT chest (demo)",
                        station_ae_title=DEMO_AE,
                        station_name="DEMO CT",
                    )
                ],
                actor="user:demo",
                referring_physician_name="Referrer^Rita",
            )
            echo(f"1. registered patient {patient_id} and order {order.id}, "
                 f"accession number {order.accession_number}")  # fmt: skip

            # 2. Modality Worklist (RAD-5): our station's CT steps today.
            item = None
            for status, found in assoc.send_c_find(worklist_query(DEMO_AE, today, "CT"), MWL_FIND):
                if status and status.Status in (0xFF00, 0xFF01) and found is not None:
                    if found.AccessionNumber == order.accession_number:
                        item = found
                elif not status or status.Status != 0x0000:
                    # A refusal (e.g. 0124H: the device registry lists the demo
                    # AE as uni-directional) is not "the order is not listed".
                    raise DemoFailed(_refused("the worklist query", status))
            if item is None:
                raise DemoFailed("the worklist did not list the order")
            echo(f"2. worklist: step {item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID}"
                 f" for study {item.StudyInstanceUID}")  # fmt: skip

            # 3. MPPS IN PROGRESS (RAD-6).
            mpps_uid = generate_uid()
            status, _ = assoc.send_n_create(mpps_in_progress(item, DEMO_AE, now), MPPS, mpps_uid)
            if not status or status.Status != 0x0000:
                raise DemoFailed(_refused("MPPS N-CREATE", status))
            echo("3. MPPS IN PROGRESS")

            # 4. The images (RAD-8).
            images = make_study(item, slices=slices, performed_step_uid=mpps_uid)
            for image in images:
                status = assoc.send_c_store(image)
                if not status or status.Status != 0x0000:
                    raise DemoFailed(_refused("C-STORE", status))
                stored = True
            echo(f"4. stored {len(images)} CT images")

            # 5. MPPS COMPLETED (RAD-7).
            status, _ = assoc.send_n_set(mpps_completed(images, datetime.now()), MPPS, mpps_uid)
            if not status or status.Status != 0x0000:
                raise DemoFailed(_refused("MPPS N-SET COMPLETED", status))
            echo("5. MPPS COMPLETED")
        except DemoFailed:
            # Nothing acquired: the demo order leaves the worklist again
            # (only a SCHEDULED order can be cancelled; after an MPPS it stays
            # as the device left it, as a real one would).
            if order is not None and not stored:
                try:
                    runtime.registration.cancel_order(order.id, actor="user:demo", reason="demo failed")
                except InvalidState:
                    pass
            raise
        finally:
            assoc.release()

        # 6. The Waiting list: reconciliation links the study in the background.
        waiting = WaitingList(runtime.index)
        study_uid = str(item.StudyInstanceUID)
        deadline = time.monotonic() + timeout
        state = waiting.state_of(study_uid)
        while state is not WorkflowState.ACQUIRED and time.monotonic() < deadline:
            time.sleep(0.2)
            state = waiting.state_of(study_uid)
        echo(f"6. Waiting list: study {study_uid} is {state.value if state else 'not listed'}")
        if state is not WorkflowState.ACQUIRED:
            raise DemoFailed("the study did not reach the Waiting list as acquired")
        return DemoResult(
            patient_id, order.accession_number, order.id, study_uid, len(images), state,
            server is not None,
        )  # fmt: skip
    finally:
        if server is not None:
            server.stop()
        runtime.close()
