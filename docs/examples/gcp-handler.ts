/**
 * Zuplo request handler: reads an object from Google Cloud Storage with an access token from
 * zuplo-sts (workload identity federation, impersonating the mapping's service account).
 *
 * Route (routes.oas.json): GET /reports/{reportId}, handler `default` from this module.
 *
 * Environment variables, besides sts-client.ts's STS_URL and STS_AUDIENCE:
 *   REPORTS_BUCKET  the Cloud Storage bucket, e.g. my-reports
 *   STS_MAPPING     optional: the mapping name (e.g. "analytics-gcp"), needed only when several
 *                   mappings bind the deployment
 */
import { environment, HttpProblems, ZuploContext, ZuploRequest } from "@zuplo/runtime";
import { gcpAccessToken, StsError } from "./sts-client";

export default async function (request: ZuploRequest, context: ZuploContext): Promise<Response> {
  const bucket = environment.REPORTS_BUCKET ?? "my-reports";
  const reportId = request.params.reportId;
  if (!reportId || !/^[A-Za-z0-9-]{1,64}$/.test(reportId)) {
    return HttpProblems.badRequest(request, context, { detail: "invalid report id" });
  }

  let accessToken: string;
  try {
    // No `scope`: the service grants the mapping's scopes (cloud-platform by default).
    accessToken = await gcpAccessToken(context, { mapping: environment.STS_MAPPING });
  } catch (error) {
    if (error instanceof StsError) {
      context.log.error(`zuplo-sts refused: ${error.status} ${error.code}: ${error.description}`);
      if (error.status === 503) {
        return HttpProblems.serviceUnavailable(request, context, undefined, {
          "retry-after": String(error.retryAfter ?? 5),
        });
      }
      return HttpProblems.badGateway(request, context);
    }
    throw error;
  }

  const object = encodeURIComponent(`reports/${reportId}.json`);
  const url = `https://storage.googleapis.com/storage/v1/b/${bucket}/o/${object}?alt=media`;
  const response = await fetch(url, { headers: { authorization: `Bearer ${accessToken}` } });
  if (response.status === 404) {
    return HttpProblems.notFound(request, context);
  }
  if (!response.ok) {
    context.log.error(`Cloud Storage read failed: ${response.status}`);
    return HttpProblems.badGateway(request, context);
  }
  return new Response(response.body, {
    status: 200,
    headers: { "content-type": response.headers.get("content-type") ?? "application/json" },
  });
}
