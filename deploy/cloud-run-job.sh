#!/bin/sh
# cloops on Cloud Run Jobs: N tasks, each building its shard of the backlog and publishing
# the stories of it that completed.
#
# Cloud Run gives each task CLOUD_RUN_TASK_INDEX and CLOUD_RUN_TASK_COUNT: cloops reads them
# (no CLOOPS_SHARD needed). The tasks share the response cache on a GCS bucket (gcsfs; the
# job's service account needs Storage Object Admin on it), so nothing is paid twice and a
# task retried after a crash resumes the predictions its predecessor noted. Each task then
# publishes its shard to the template's publish.url (e.g. gs://<project>.firebasestorage.app/
# adloops): index.json is merged with the bucket's under a precondition (ifGenerationMatch),
# so the tasks keep each other's stories. The build's exit status is kept, so a task with a
# failed story is retried as before.
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
  --command sh --args=-c,'doit; rc=$?; doit publish && exit $rc' \
  --set-env-vars CLOOPS_CACHE_URL=gs://your-bucket/cloops-cache \
  --set-secrets OPENAI_API_KEY=openai-api-key:latest,REPLICATE_API_TOKEN=replicate-api-token:latest

gcloud run jobs execute cloops-build --region "$REGION" --wait

# what the whole fleet spent, per template, story, step and worker (anywhere with the URL)
CLOOPS_CACHE_URL=gs://your-bucket/cloops-cache doit report --shared
