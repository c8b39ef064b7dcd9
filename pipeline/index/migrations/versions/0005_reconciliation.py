"""reconciliation: study_links (which order a stored study belongs to, or unmatched)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 13:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('study_links',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('order_pk', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.String(), nullable=False),
    sa.Column('actor', sa.String(), nullable=False),
    sa.Column('received', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_pk'], ['orders.pk'], name=op.f('fk_study_links_order_pk_orders')),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.pk'], name=op.f('fk_study_links_study_pk_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_study_links')),
    sa.UniqueConstraint('study_pk', name=op.f('uq_study_links_study_pk'))
    )
    with op.batch_alter_table('study_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_links_order_pk'), ['order_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_links_state'), ['state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('study_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_links_state'))
        batch_op.drop_index(batch_op.f('ix_study_links_order_pk'))

    op.drop_table('study_links')
