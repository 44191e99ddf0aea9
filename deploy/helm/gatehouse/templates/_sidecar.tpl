{{/* Include under an app pod's initContainers: {{ include "gatehouse.sidecar" . | nindent 8 }} */}}
{{- define "gatehouse.sidecar" -}}
- name: gatehouse
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
  restartPolicy: Always
  env:
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
  args:
    - serve
    - --bundle={{ .Values.bundleUrl }}
    - --feed={{ .Release.Name }}-sync:{{ .Values.sync.port }}
    - --data-dir=/var/lib/gatehouse/data
    - --state-dir=/var/lib/gatehouse
    - --listen=$(POD_IP):{{ .Values.grpcPort }}
    - --unix=/run/gatehouse/gatehouse.sock
    - --metrics-port={{ .Values.metricsPort }}
    - --metrics-host=$(POD_IP)
    - --no-reflection
  startupProbe:
    grpc: {port: {{ .Values.grpcPort }}}
    periodSeconds: 2
    failureThreshold: 60
  readinessProbe:
    grpc: {port: {{ .Values.grpcPort }}}
    periodSeconds: 5
  resources: {{- toYaml .Values.sidecar.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities: {drop: [ALL]}
  volumeMounts:
    - {name: gatehouse-socket, mountPath: /run/gatehouse}
    - {name: gatehouse-state, mountPath: /var/lib/gatehouse}
    - {name: gatehouse-config, mountPath: /etc/gatehouse, readOnly: true}
{{- end -}}
