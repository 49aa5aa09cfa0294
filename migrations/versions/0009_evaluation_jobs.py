"""evaluation jobs: datasets, jobs, their versions and chunks; published reports

Revision ID: 0009
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import marketplace.db


revision: str = '0009'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('datasets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('blob_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('arrays', sa.JSON(), nullable=False),
    sa.Column('created_at', marketplace.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', marketplace.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_datasets_organization_id'), 'datasets', ['organization_id'], unique=False)
    op.create_table('evaluation_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('chunk_samples', sa.Integer(), nullable=False),
    sa.Column('metric', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('output_name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('top_k', sa.Integer(), nullable=False),
    sa.Column('created_at', marketplace.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', marketplace.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('cancelled_at', marketplace.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('report_consent_at', marketplace.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_evaluation_jobs_dataset_id'), 'evaluation_jobs', ['dataset_id'], unique=False)
    op.create_index(op.f('ix_evaluation_jobs_organization_id'), 'evaluation_jobs', ['organization_id'], unique=False)
    op.create_index(op.f('ix_evaluation_jobs_state'), 'evaluation_jobs', ['state'], unique=False)
    op.create_table('published_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('listing_id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('published_at', marketplace.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['evaluation_jobs.id'], ),
    sa.ForeignKeyConstraint(['listing_id'], ['listings.id'], ),
    sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('listing_id', 'job_id')
    )
    op.create_index(op.f('ix_published_reports_listing_id'), 'published_reports', ['listing_id'], unique=False)
    op.create_table('evaluation_job_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('listing_id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=True),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=True),
    sa.Column('royalty_per_1k_minor', sa.BigInteger(), nullable=False),
    sa.Column('calls_reserved', sa.BigInteger(), nullable=False),
    sa.Column('hold_id', sa.BigInteger(), nullable=True),
    sa.Column('hold_minor', sa.BigInteger(), nullable=False),
    sa.Column('calls_charged', sa.BigInteger(), nullable=False),
    sa.Column('charged_minor', sa.BigInteger(), nullable=False),
    sa.Column('released_at', marketplace.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['hold_id'], ['ledger_transactions.id'], ),
    sa.ForeignKeyConstraint(['job_id'], ['evaluation_jobs.id'], ),
    sa.ForeignKeyConstraint(['license_id'], ['licenses.id'], ),
    sa.ForeignKeyConstraint(['listing_id'], ['listings.id'], ),
    sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'version_id')
    )
    op.create_index(op.f('ix_evaluation_job_versions_job_id'), 'evaluation_job_versions', ['job_id'], unique=False)
    op.create_index(op.f('ix_evaluation_job_versions_listing_id'), 'evaluation_job_versions', ['listing_id'], unique=False)
    op.create_index(op.f('ix_evaluation_job_versions_version_id'), 'evaluation_job_versions', ['version_id'], unique=False)
    op.create_table('evaluation_chunks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('job_version_id', sa.Integer(), nullable=False),
    sa.Column('chunk_index', sa.Integer(), nullable=False),
    sa.Column('start', sa.Integer(), nullable=False),
    sa.Column('stop', sa.Integer(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('lease_until', marketplace.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('samples_done', sa.Integer(), nullable=False),
    sa.Column('samples_failed', sa.Integer(), nullable=False),
    sa.Column('samples_charged', sa.Integer(), nullable=False),
    sa.Column('charged_minor', sa.BigInteger(), nullable=False),
    sa.Column('score_sum', sa.Float(), nullable=True),
    sa.Column('score_count', sa.Integer(), nullable=False),
    sa.Column('latencies_ms', sa.JSON(), nullable=False),
    sa.Column('failures', sa.JSON(), nullable=False),
    sa.Column('output_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('finished_at', marketplace.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['evaluation_jobs.id'], ),
    sa.ForeignKeyConstraint(['job_version_id'], ['evaluation_job_versions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_version_id', 'chunk_index')
    )
    op.create_index(op.f('ix_evaluation_chunks_job_id'), 'evaluation_chunks', ['job_id'], unique=False)
    op.create_index('ix_evaluation_chunks_state_lease', 'evaluation_chunks', ['state', 'lease_until'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_evaluation_chunks_state_lease', table_name='evaluation_chunks')
    op.drop_index(op.f('ix_evaluation_chunks_job_id'), table_name='evaluation_chunks')
    op.drop_table('evaluation_chunks')
    op.drop_index(op.f('ix_evaluation_job_versions_version_id'), table_name='evaluation_job_versions')
    op.drop_index(op.f('ix_evaluation_job_versions_listing_id'), table_name='evaluation_job_versions')
    op.drop_index(op.f('ix_evaluation_job_versions_job_id'), table_name='evaluation_job_versions')
    op.drop_table('evaluation_job_versions')
    op.drop_index(op.f('ix_published_reports_listing_id'), table_name='published_reports')
    op.drop_table('published_reports')
    op.drop_index(op.f('ix_evaluation_jobs_state'), table_name='evaluation_jobs')
    op.drop_index(op.f('ix_evaluation_jobs_organization_id'), table_name='evaluation_jobs')
    op.drop_index(op.f('ix_evaluation_jobs_dataset_id'), table_name='evaluation_jobs')
    op.drop_table('evaluation_jobs')
    op.drop_index(op.f('ix_datasets_organization_id'), table_name='datasets')
    op.drop_table('datasets')
