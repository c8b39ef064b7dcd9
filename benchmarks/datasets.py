"""Synthetic DICOM workloads for the benchmarks, deterministic for a given seed.

Two workloads:

* :func:`write_ct_series`: one CT series (default 300 slices of 512x512
  signed 16-bit, CT Image Storage, explicit VR little endian), with the
  attributes a scanner writes (patient, study, series, frame of reference,
  equipment, image plane, CT image, VOI LUT modules). The pixels are a body
  phantom (air outside, soft tissue, fat, bone, a padding value outside the
  reconstruction circle) plus Gaussian noise: random in the tissue, constant
  in the air, so the data compresses about as well as a real CT does.
* :func:`write_small_instances`: many small MR images (default 2,000 of 64x64
  unsigned 16-bit, about 9.5 kB each) spread over 20 studies of 10 patients,
  two series per study.

``variant`` changes every UID (study, series, instance, frame of reference)
and nothing else, so that a benchmark can send the same pixels again as new
instances: re-sending the same SOP Instance UIDs would measure duplicate
handling, not ingest. Same seed and variant, same files, byte for byte.

Command line::

    python -m benchmarks.datasets OUT [--seed 0] [--variant 0] [--ct-slices 300] [--small-count 2000]

writes ``OUT/ct/`` and ``OUT/small/``.
"""

from __future__ import annotations

import argparse
import functools
import uuid
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

CT_SIZE = 512
SMALL_SIZE = 64
#: Stored value outside the reconstruction circle (Pixel Padding Value).
CT_PADDING = -2000


#: Namespace of the name-based UUIDs our UIDs are made from.
_UID_NAMESPACE = uuid.UUID("6f1c2a52-3c55-4d0e-9a43-4c6967687462")


def make_uid(*parts: object) -> str:
    """A deterministic UID under 2.25 (PS3.5 B.2): a name-based UUID of ``parts``.

    (pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources and
    draws a random UUID, so it cannot be used for reproducible data.)
    """
    name = "/".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "LB_BENCH"
    return meta


# -- CT -------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def ct_pixels(seed: int, slices: int) -> tuple[bytes, ...]:
    """The stored values of every slice, as little-endian int16 bytes (cached)."""
    yy, xx = np.mgrid[0:CT_SIZE, 0:CT_SIZE].astype(np.float32)
    cx = cy = (CT_SIZE - 1) / 2
    r = np.hypot(xx - cx, yy - cy)
    fov = r <= CT_SIZE / 2 - 1
    out = []
    for z in range(slices):
        rng = np.random.default_rng([seed, z])
        t = z / max(slices - 1, 1)
        # Body: an ellipse that narrows towards both ends of the scan range.
        ax = 200 - 40 * abs(t - 0.5)
        ay = 140 - 25 * abs(t - 0.5)
        body = ((xx - cx) / ax) ** 2 + ((yy - cy - 10) / ay) ** 2 <= 1
        fat = ((xx - cx) / (ax - 12)) ** 2 + ((yy - cy - 10) / (ay - 12)) ** 2 > 1
        spine = np.hypot(xx - cx, yy - (cy + ay - 45)) <= 18
        organ = ((xx - cx + 60) / 55) ** 2 + ((yy - cy + 5) / 45) ** 2 <= 1
        hu = np.full((CT_SIZE, CT_SIZE), -1000.0, dtype=np.float32)
        hu[body] = 40.0
        hu[body & fat] = -90.0
        hu[organ & body] = 60.0 + 10 * np.sin(6.28 * t)
        hu[spine] = 700.0
        hu[body] += rng.normal(0.0, 12.0, size=int(body.sum())).astype(np.float32)
        stored = np.clip(np.rint(hu + 1024.0), -1024, 3071).astype("<i2")
        stored[~fov] = CT_PADDING
        out.append(stored.tobytes())
    return tuple(out)


def ct_dataset(
    index: int, slices: int, pixels: bytes, *, seed: int = 0, variant: int = 0
) -> Dataset:
    """Slice ``index`` (0-based) of the series, with its File Meta Information."""
    study_uid = make_uid("ct-study", seed, variant)
    series_uid = make_uid("ct-series", seed, variant)
    sop_uid = make_uid("ct-instance", seed, variant, index)
    study_date = date(2024, 3, 14) + timedelta(days=variant)
    day = study_date.strftime("%Y%m%d")

    ds = Dataset()
    ds.file_meta = _file_meta(CTImageStorage, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = day
    ds.InstanceCreationTime = "101530"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day
    ds.StudyTime = "101200"
    ds.SeriesTime = "101400"
    ds.AcquisitionTime = ds.ContentTime = f"1014{index % 60:02d}.{index:06d}"
    ds.AccessionNumber = f"ACC{seed:02d}{variant:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "Lightbox Benchmarks"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS W CONTRAST"
    ds.SeriesDescription = "Axial 1.25mm Soft Tissue"
    ds.ManufacturerModelName = "SynthScan 64"
    ds.PatientName = f"Bench^Ct^{variant}"
    ds.PatientID = f"BENCH-CT-{seed}-{variant}"
    ds.PatientBirthDate = "19610203"
    ds.PatientSex = "F"
    ds.PatientAge = "063Y"
    ds.PatientWeight = "68"
    ds.BodyPartExamined = "CHEST"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = "1.0"
    ds.ReconstructionDiameter = "380"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "250"
    ds.Exposure = "125"
    ds.FilterType = "BODY FILTER"
    ds.GeneratorPower = "30"
    ds.FocalSpots = "0.7"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{variant + 1}"
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    z = -(index * 1.25)
    ds.ImagePositionPatient = ["-190.0", "-190.0", f"{z:.2f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = make_uid("ct-for", seed, variant)
    ds.PositionReferenceIndicator = "XY"
    ds.SliceLocation = f"{z:.2f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = CT_SIZE
    ds.Columns = CT_SIZE
    ds.PixelSpacing = ["0.742188", "0.742188"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelPaddingValue = CT_PADDING
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    ds.ImagesInAcquisition = slices
    return ds


def write_ct_series(
    folder: Path, *, slices: int = 300, seed: int = 0, variant: int = 0
) -> list[Path]:
    """Write the CT series as Part-10 files ``folder/CT000001.dcm``...; returns them in order."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = ct_pixels(seed, slices)
    paths = []
    for i in range(slices):
        path = folder / f"CT{i + 1:06d}.dcm"
        ct_dataset(i, slices, pixels[i], seed=seed, variant=variant).save_as(
            path, enforce_file_format=True
        )
        paths.append(path)
    return paths


def to_jpeg_lossless_sv1(src: Path, dst: Path) -> None:
    """Re-encode the Part-10 file ``src`` as JPEG Lossless SV1 (...4.70) into ``dst``.

    pydicom 3.0 has no encoder for any JPEG process (``pydicom.pixels.get_encoder``
    raises ``NotImplementedError``; it encodes RLE, JPEG-LS, JPEG 2000 and
    Deflated only), so GDCM (python-gdcm) does it: ``ImageChangeTransferSyntax``
    to JPEG Lossless Process 14 Selection Value 1. Everything else in the file
    is kept; the result decodes to the same stored values (signed 16-bit included).
    """
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {src} as JPEG Lossless SV1")
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(dst))
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {dst}")


# -- small MR -------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def small_pixels(seed: int, count: int) -> tuple[bytes, ...]:
    """Stored values of every small image (12 bits in 16), little-endian uint16 bytes."""
    yy, xx = np.mgrid[0:SMALL_SIZE, 0:SMALL_SIZE].astype(np.float32)
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, 1_000_000 + i])
        cx, cy = rng.uniform(20, 44, size=2)
        blob = 1800.0 * np.exp(-(((xx - cx) / 14) ** 2 + ((yy - cy) / 18) ** 2))
        noise = rng.normal(60.0, 25.0, size=blob.shape)
        out.append(np.clip(blob + noise, 0, 4095).astype("<u2").tobytes())
    return tuple(out)


def small_dataset(
    index: int, count: int, studies: int, pixels: bytes, *, seed: int = 0, variant: int = 0
) -> Dataset:
    """Instance ``index`` (0-based) of the small workload, with its File Meta Information."""
    per_study = max(1, count // studies)
    study = min(index // per_study, studies - 1)
    within = index - study * per_study
    series = 0 if within < per_study // 2 else 1
    patient = study // 2
    study_uid = make_uid("mr-study", seed, variant, study)
    series_uid = make_uid("mr-series", seed, variant, study, series)
    sop_uid = make_uid("mr-instance", seed, variant, index)
    day = (date(2023, 1, 2) + timedelta(days=study * 7 + variant)).strftime("%Y%m%d")

    ds = Dataset()
    ds.file_meta = _file_meta(MRImageStorage, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
    ds.StudyTime = "083000"
    ds.SeriesTime = f"08{31 + series:02d}00"
    ds.ContentTime = f"08{31 + series:02d}{within % 60:02d}"
    ds.AccessionNumber = f"MR{seed:02d}{variant:04d}{study:03d}"
    ds.Modality = "MR"
    ds.Manufacturer = "Lightbox Benchmarks"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StudyDescription = "MR BRAIN WO CONTRAST"
    ds.SeriesDescription = ["AX T2 FSE", "AX T1 SE"][series]
    ds.ManufacturerModelName = "SynthMag 1.5T"
    ds.PatientName = f"Bench^Mr^{patient}"
    ds.PatientID = f"BENCH-MR-{seed}-{variant}-{patient:03d}"
    ds.PatientBirthDate = f"{1950 + patient:04d}0101"
    ds.PatientSex = "MF"[patient % 2]
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = ["SE"]
    ds.SequenceVariant = ["SK"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = "5"
    ds.RepetitionTime = ["4000", "500"][series]
    ds.EchoTime = ["100", "12"][series]
    ds.EchoTrainLength = [16, 1][series]
    ds.MagneticFieldStrength = "1.5"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{study + 1}"
    ds.SeriesNumber = series + 1
    ds.InstanceNumber = within + 1
    ds.ImagePositionPatient = ["-120", "-120", f"{within * 5.0:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = make_uid("mr-for", seed, variant, study)
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{within * 5.0:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = SMALL_SIZE
    ds.Columns = SMALL_SIZE
    ds.PixelSpacing = ["3.75", "3.75"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "900"
    ds.WindowWidth = "1800"
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    return ds


def write_small_instances(
    folder: Path, *, count: int = 2000, studies: int = 20, seed: int = 0, variant: int = 0
) -> list[Path]:
    """Write ``count`` small MR instances over ``studies`` studies; returns the paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = small_pixels(seed, count)
    paths = []
    for i in range(count):
        path = folder / f"MR{i + 1:06d}.dcm"
        small_dataset(i, count, studies, pixels[i], seed=seed, variant=variant).save_as(
            path, enforce_file_format=True
        )
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", type=int, default=0)
    parser.add_argument("--ct-slices", type=int, default=300)
    parser.add_argument("--small-count", type=int, default=2000)
    args = parser.parse_args(argv)
    ct = write_ct_series(
        args.out / "ct", slices=args.ct_slices, seed=args.seed, variant=args.variant
    )
    small = write_small_instances(
        args.out / "small", count=args.small_count, seed=args.seed, variant=args.variant
    )
    for name, paths in (("ct", ct), ("small", small)):
        size = sum(p.stat().st_size for p in paths)
        print(f"{name}: {len(paths)} files, {size / 1e6:.1f} MB in {paths[0].parent}")


if __name__ == "__main__":
    main()
