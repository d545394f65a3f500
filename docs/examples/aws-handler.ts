/**
 * Zuplo request handler: reads an object from S3 with credentials from zuplo-sts, signing the
 * request with aws4fetch (SigV4, no AWS SDK needed in the gateway).
 *
 * Route (routes.oas.json): GET /orders/{orderId}, handler `default` from this module.
 *
 * Environment variables, besides sts-client.ts's STS_URL and STS_AUDIENCE:
 *   ORDERS_BUCKET   the S3 bucket, e.g. orders
 *   AWS_REGION      the bucket's region, e.g. us-east-1
 *   STS_MAPPING     optional: the mapping name (needed only when several mappings bind the
 *                   deployment, e.g. "orders-prod" in deploy/kubernetes/mappings-configmap.yaml)
 */
import { environment, HttpProblems, ZuploContext, ZuploRequest } from "@zuplo/runtime";
import { AwsClient } from "aws4fetch";
import { awsCredentials, StsError } from "./sts-client";

export default async function (request: ZuploRequest, context: ZuploContext): Promise<Response> {
  const bucket = environment.ORDERS_BUCKET ?? "orders";
  const region = environment.AWS_REGION ?? "us-east-1";
  const orderId = request.params.orderId;
  if (!orderId || !/^[A-Za-z0-9-]{1,64}$/.test(orderId)) {
    return HttpProblems.badRequest(request, context, { detail: "invalid order id" });
  }

  let credentials;
  try {
    credentials = await awsCredentials(context, { mapping: environment.STS_MAPPING });
  } catch (error) {
    if (error instanceof StsError) {
      // Log the fixed-phrase reason for operators; the caller gets no detail.
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

  const aws = new AwsClient({
    accessKeyId: credentials.AccessKeyId,
    secretAccessKey: credentials.SecretAccessKey,
    sessionToken: credentials.SessionToken,
    service: "s3",
    region,
  });
  const url = `https://${bucket}.s3.${region}.amazonaws.com/orders/${orderId}.json`;
  const object = await aws.fetch(url, { method: "GET" });
  if (object.status === 404 || object.status === 403) {
    // S3 answers 403 for a missing key when the role may not list the bucket.
    return HttpProblems.notFound(request, context);
  }
  if (!object.ok) {
    context.log.error(`S3 GetObject failed: ${object.status}`);
    return HttpProblems.badGateway(request, context);
  }
  return new Response(object.body, {
    status: 200,
    headers: { "content-type": object.headers.get("content-type") ?? "application/json" },
  });
}
