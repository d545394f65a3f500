'use strict';
// The express variant of the comparator: the same jose verification behind express 5 with its
// urlencoded body parser, 2 cluster workers.

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
  const express = require('express');
  const app = express();
  const JWKS = createRemoteJWKSet(settings.jwksUrl);

  app.disable('x-powered-by');
  app.disable('etag');
  app.use(express.urlencoded({ extended: false, limit: '64kb' }));

  app.post('/token', async (request, response) => {
    const form = request.body || {};
    if (form.grant_type !== GRANT) {
      response.status(400).json({ error: 'invalid_request' });
      return;
    }
    try {
      const { payload } = await jwtVerify(form.subject_token || '', JWKS, {
        issuer: settings.issuer,
        audience: settings.audience,
        algorithms: ['RS256'],
      });
      response
        .status(200)
        .set({
          'content-type': 'application/json',
          'cache-control': 'no-store',
          pragma: 'no-cache',
        })
        .send(answer(payload.sub, settings.bodyBytes));
    } catch {
      response.status(400).json({ error: 'invalid_request' });
    }
  });

  app.get('/healthz', (request, response) => {
    response.json({ status: 'ok' });
  });

  app.listen(settings.port, '127.0.0.1');
}
