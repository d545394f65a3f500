'use strict';
// The comparator: fastify with 2 cluster workers verifying the Zuplo ID token with `jose`
// exactly as the Zuplo documentation recommends (createRemoteJWKSet + jwtVerify with issuer and
// audience). It only verifies: no mapping selection, no credential cache.

const cluster = require('node:cluster');
const { config, answer, GRANT } = require('./common.js');

const settings = config();

if (cluster.isPrimary) {
  for (let i = 0; i < settings.workers; i += 1) {
    cluster.fork();
  }
  cluster.on('exit', (worker, code, signal) => {
    if (signal !== 'SIGTERM') {
      console.error(`worker ${worker.process.pid} exited (${signal || code})`);
    }
  });
  const stop = () => {
    for (const worker of Object.values(cluster.workers)) {
      worker.process.kill('SIGTERM');
    }
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const { createRemoteJWKSet, jwtVerify } = require('jose');
  const fastify = require('fastify')({ logger: false });
  const JWKS = createRemoteJWKSet(settings.jwksUrl);

  fastify.addContentTypeParser(
    'application/x-www-form-urlencoded',
    { parseAs: 'string', bodyLimit: 64 * 1024 },
    (request, body, done) => done(null, new URLSearchParams(body)),
  );

  fastify.post('/token', async (request, reply) => {
    const form = request.body;
    if (!(form instanceof URLSearchParams) || form.get('grant_type') !== GRANT) {
      reply.code(400);
      return { error: 'invalid_request' };
    }
    try {
      const { payload } = await jwtVerify(form.get('subject_token') || '', JWKS, {
        issuer: settings.issuer,
        audience: settings.audience,
        algorithms: ['RS256'],
      });
      reply
        .header('content-type', 'application/json')
        .header('cache-control', 'no-store')
        .header('pragma', 'no-cache');
      return answer(payload.sub, settings.bodyBytes);
    } catch {
      reply.code(400);
      return { error: 'invalid_request' };
    }
  });

  fastify.get('/healthz', async () => ({ status: 'ok' }));

  fastify.listen({ host: '127.0.0.1', port: settings.port }).catch((error) => {
    console.error(error);
    process.exit(1);
  });
}
