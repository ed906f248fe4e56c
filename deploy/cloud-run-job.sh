#!/bin/sh
# cloops on Cloud Run Jobs: N tasks, each building its shard of the backlog.
#
# Cloud Run gives each task CLOUD_RUN_TASK_INDEX and CLOUD_RUN_TASK_COUNT: cloops reads them
# (no CLOOPS_SHARD needed). The tasks share the response cache on a GCS bucket (gcsfs; the
# job's service account needs Storage Object Admin on it), so nothing is paid twice and a
# task retried after a crash resumes the predictions its predecessor noted.
#
# The image: your project (templates/, backlogs/, dodo.py) with cloops installed, built and
# pushed to Artifact Registry. Keys come from Secret Manager.
set -eu
REGION=europe-west1
IMAGE=europe-west1-docker.pkg.dev/your-project/cloops/cloops-project:latest
TASKS=4

gcloud run jobs deploy cloops-build \
  --region "$REGION" --image "$IMAGE" \
  --tasks "$TASKS" --parallelism "$TASKS" --max-retries 3 --task-timeout 3600s \
  --command doit \
  --set-env-vars CLOOPS_CACHE_URL=gs://your-bucket/cloops-cache \
  --set-secrets OPENAI_API_KEY=openai-api-key:latest,REPLICATE_API_TOKEN=replicate-api-token:latest

gcloud run jobs execute cloops-build --region "$REGION" --wait

# Publish once every task is done: one task builds every story from the shared cache (paying
# nothing: every answer is there) and publishes them with one complete index.json per
# template (tasks publishing their own shards would each rewrite the index with theirs only).
gcloud run jobs deploy cloops-publish \
  --region "$REGION" --image "$IMAGE" --tasks 1 --max-retries 2 --task-timeout 3600s \
  --command sh --args=-c,'doit && doit publish && doit report --shared' \
  --set-env-vars CLOOPS_CACHE_URL=gs://your-bucket/cloops-cache,CLOOPS_WORKER_ID=publisher \
  --set-secrets OPENAI_API_KEY=openai-api-key:latest,REPLICATE_API_TOKEN=replicate-api-token:latest
gcloud run jobs execute cloops-publish --region "$REGION" --wait
