{{/* The one image every Ferry pod runs. */}}
{{- define "ferry.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Fails unless installed in ferry-system, which Ferry's routes and policies name. */}}
{{- define "ferry.namespace" -}}
{{- if ne .Release.Namespace "ferry-system" -}}
{{- fail (printf "Ferry installs into the namespace ferry-system (its routes, network policies and Services name it), not %q: helm install --namespace ferry-system" .Release.Namespace) -}}
{{- end -}}
ferry-system
{{- end }}

{{/* imagePullPolicy, imagePullSecrets, resources: only when set (none by default). */}}
{{- define "ferry.pullPolicy" -}}
{{- with .Values.image.pullPolicy }}
          imagePullPolicy: {{ . }}
{{- end }}
{{- end }}

{{/* OpenTelemetry's variables, when traces are exported (the operator hands them on to the
model servers it runs). */}}
{{- define "ferry.traceEnv" -}}
{{- with .Values.tracing.otlpEndpoint }}
            - {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ . | quote }}}
{{- end }}
{{- with .Values.tracing.sampler }}
            - {name: OTEL_TRACES_SAMPLER, value: {{ . | quote }}}
{{- end }}
{{- with .Values.tracing.samplerArg }}
            - {name: OTEL_TRACES_SAMPLER_ARG, value: {{ . | quote }}}
{{- end }}
{{- end }}

{{- define "ferry.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
      imagePullSecrets: {{ toJson . }}
{{- end }}
{{- with .Values.nodeSelector }}
      nodeSelector: {{ toJson . }}
{{- end }}
{{- with .Values.tolerations }}
      tolerations: {{ toJson . }}
{{- end }}
{{- with .Values.affinity }}
      affinity: {{ toJson . }}
{{- end }}
{{- end }}
