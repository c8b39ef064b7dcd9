"""initial schema: patients, studies, series, instances, work items

Revision ID: 0001
Revises: 
Create Date: 2026-12-03 17:25:36.075046
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patients',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(), nullable=False),
    sa.Column('patient_name', sa.String(), nullable=False),
    sa.Column('patient_name_search', sa.String(), nullable=False),
    sa.Column('patient_birth_date', sa.String(), nullable=False),
    sa.Column('patient_sex', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_patients')),
    sa.UniqueConstraint('patient_id', 'issuer_of_patient_id', name=op.f('uq_patients_patient_id_issuer_of_patient_id'))
    )
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patients_patient_name_search'), ['patient_name_search'], unique=False)

    op.create_table('studies',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_pk', sa.Integer(), nullable=False),
    sa.Column('study_date', sa.String(), nullable=False),
    sa.Column('study_time', sa.String(), nullable=False),
    sa.Column('accession_number', sa.String(), nullable=False),
    sa.Column('study_id', sa.String(), nullable=False),
    sa.Column('study_description', sa.String(), nullable=False),
    sa.Column('referring_physician_name', sa.String(), nullable=False),
    sa.Column('modalities_in_study', sa.String(), nullable=False),
    sa.Column('number_of_series', sa.Integer(), nullable=False),
    sa.Column('number_of_instances', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_pk'], ['patients.pk'], name=op.f('fk_studies_patient_pk_patients')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_studies')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_studies_study_instance_uid'))
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_studies_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_patient_pk'), ['patient_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_study_date'), ['study_date'], unique=False)

    op.create_table('series',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('modality', sa.String(), nullable=False),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.String(), nullable=False),
    sa.Column('series_date', sa.String(), nullable=False),
    sa.Column('series_time', sa.String(), nullable=False),
    sa.Column('body_part_examined', sa.String(), nullable=False),
    sa.Column('performed_procedure_step_start_date', sa.String(), nullable=False),
    sa.Column('performed_procedure_step_start_time', sa.String(), nullable=False),
    sa.Column('number_of_instances', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.pk'], name=op.f('fk_series_study_pk_studies')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_series_series_instance_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_modality'), ['modality'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study_pk'), ['study_pk'], unique=False)

    op.create_table('instances',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_pk', sa.Integer(), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('bits_allocated', sa.Integer(), nullable=True),
    sa.Column('photometric_interpretation', sa.String(), nullable=False),
    sa.Column('content_date', sa.String(), nullable=False),
    sa.Column('content_time', sa.String(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('storage_key', sa.String(length=128), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('calling_ae', sa.String(), nullable=False),
    sa.Column('source', sa.String(), nullable=False),
    sa.Column('pixel_state', sa.Enum('pending', 'ready', 'failed', 'none', name='pixel_state'), nullable=False),
    sa.Column('pixel_error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['series_pk'], ['series.pk'], name=op.f('fk_instances_series_pk_series')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_instances')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_instances_sop_instance_uid')),
    sa.UniqueConstraint('storage_key', name=op.f('uq_instances_storage_key'))
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_series_pk'), ['series_pk'], unique=False)

    op.create_table('work_items',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('instance_pk', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=False),
    sa.Column('state', sa.Enum('pending', 'claimed', 'done', 'failed', name='work_state'), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_pk'], ['instances.pk'], name=op.f('fk_work_items_instance_pk_instances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_work_items'))
    )
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_work_items_instance_pk'), ['instance_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_work_items_stage_state'), ['stage', 'state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_work_items_stage_state'))
        batch_op.drop_index(batch_op.f('ix_work_items_instance_pk'))

    op.drop_table('work_items')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_series_pk'))

    op.drop_table('instances')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_pk'))
        batch_op.drop_index(batch_op.f('ix_series_modality'))

    op.drop_table('series')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_study_date'))
        batch_op.drop_index(batch_op.f('ix_studies_patient_pk'))
        batch_op.drop_index(batch_op.f('ix_studies_accession_number'))

    op.drop_table('studies')
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patients_patient_name_search'))

    op.drop_table('patients')
    # PostgreSQL keeps enum types after their tables; drop them too.
    sa.Enum(name='work_state').drop(op.get_bind(), checkfirst=True)
    sa.Enum(name='pixel_state').drop(op.get_bind(), checkfirst=True)
